"""The multi-instance example, end to end: an HTTP API, two workers and a notifier service.

    python examples/multi_instance/run.py        # needs Redis at $PLAIT_REDIS_URL (127.0.0.1)

Starts every service as a process of its own against one Redis, under a fresh prefix: the API
(uvicorn, emitter-only), two ``plait worker`` processes running the steps, and the notifier
(its own consumer group). Then it sends orders concurrently, each twice with one
``Idempotency-Key`` (as a client retrying after a timeout would), one of them with a card that
is declined; follows every run's events over server-sent events, resuming one dropped stream
from its ``Last-Event-ID``; and prints the outcome of each order and the trace id each process
saw. Everything it started is stopped and its keys deleted at the end.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import redis

HERE = Path(__file__).resolve().parent
URL = os.environ.get("PLAIT_REDIS_URL", "redis://127.0.0.1:6379/0")
PREFIX = f"multi-{uuid.uuid4().hex[:8]}"
ORDERS = {f"o-{n}": 990 * n for n in range(1, 6)} | {"o-6": 99_000}  # o-6: card declined


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def start(name: str, command: list[str], logs: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PLAIT_REDIS_URL": URL, "PLAIT_PREFIX": PREFIX, "PLAIT_ID": name}
    with open(logs / f"{name}.log", "wb") as log:
        return subprocess.Popen(command, cwd=HERE, env=env, stdout=log, stderr=log)


def request(method: str, url: str, body: Any = None, headers: dict[str, str] | None = None) -> Any:
    data = None if body is None else json.dumps(body).encode()
    sent = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    sent.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(sent, timeout=10) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def events(url: str, last_event_id: str | None = None, stop_after: int | None = None) -> list[Any]:
    """The run's server-sent events (``id``, ``event``), until ``finished`` or ``stop_after``."""
    sent = urllib.request.Request(url)
    if last_event_id is not None:
        sent.add_header("Last-Event-ID", last_event_id)
    seen: list[Any] = []
    with urllib.request.urlopen(sent, timeout=30) as stream:
        current: dict[str, str] = {}
        for raw in stream:
            line = raw.decode().rstrip("\n")
            if line:
                field, _, value = line.partition(": ")
                current[field] = value
                continue
            seen.append((current["id"], current["event"]))
            if current["event"] == "finished" or len(seen) == stop_after:
                return seen
            current = {}
    return seen


def wait_until(check: Any, what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(0.1)


def main() -> None:
    logs = Path(tempfile.mkdtemp(prefix="plait-multi-"))
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    plait = [sys.executable, "-m", "plait.providers.redis", "--log-level", "INFO"]
    services = [
        start("api", [sys.executable, "-m", "uvicorn", "api:app", "--port", str(port)], logs),
        start("worker-1", [*plait, "worker", "worker:providers"], logs),
        start("worker-2", [*plait, "worker", "worker:providers"], logs),
        start("notifier", [*plait, "worker", "notifier:events"], logs),
    ]
    try:
        for name in ("worker-1", "worker-2", "notifier"):
            wait_until(lambda n=name: "worker ready" in (logs / f"{n}.log").read_text(), name)

        def api_up() -> bool:
            try:
                status: int = request("GET", f"{base}/orders/place-order-none")[0]
                return status == 404
            except OSError:
                return False

        wait_until(api_up, "the API")

        # every order twice, concurrently, with one Idempotency-Key per order
        sends = [(order, cents) for order, cents in ORDERS.items() for _ in range(2)]
        with ThreadPoolExecutor(max_workers=len(sends)) as pool:
            answers = list(pool.map(lambda s: request(
                "POST", f"{base}/orders", {"order_id": s[0], "amount_cents": s[1]},
                {"Idempotency-Key": s[0]}), sends))  # fmt: skip
        runs: dict[str, dict[str, Any]] = {}
        for (order, _), (_, body) in zip(sends, answers, strict=True):
            runs.setdefault(order, {"created": [], "run_id": body["run_id"]})
            runs[order]["created"].append(body["created"])
            runs[order]["trace_id"] = body["trace_id"]
            assert runs[order]["run_id"] == body["run_id"], "one run per idempotency key"
        bad = request("POST", f"{base}/orders", {"order_id": "o-7", "amount_cents": "lots"})
        print(f"invalid order: HTTP {bad[0]} {bad[1]['error']}")
        missing = request("GET", f"{base}/orders/place-order-0000")
        print(f"unknown run: HTTP {missing[0]} {missing[1]['error']}")

        # follow each run over server-sent events; o-1's stream is dropped and resumed
        for order, run in runs.items():
            url = f"{base}/orders/{run['run_id']}/events"
            if order == "o-1":
                first = events(url, stop_after=2)
                rest = events(url, last_event_id=first[-1][0])
                run["events"] = first + rest
                run["resumed_at"] = first[-1][0]
            else:
                run["events"] = events(url)
        with ThreadPoolExecutor(max_workers=len(runs)) as pool:
            infos = dict(zip(runs, pool.map(
                lambda r: request("GET", f"{base}/orders/{r['run_id']}")[1], runs.values()),
                strict=True))  # fmt: skip
        wait_until(
            lambda: (logs / "notifier.log").read_text().count("notifier confirmed") >= 5,
            "the notifier",
        )

        notified = (logs / "notifier.log").read_text()
        workers = (logs / "worker-1.log").read_text() + (logs / "worker-2.log").read_text()
        for order, run in runs.items():
            info = infos[order]
            trace = run["trace_id"]
            seen_by = ["api"]
            seen_by += [
                w
                for w in ("worker-1", "worker-2")
                if f"{w} reserve {order} trace {trace}" in workers
            ]
            if f"confirmed {order} trace {trace}" in notified:
                seen_by.append("notifier")
            rollbacks = [name for name in info["steps"] if name.startswith("rollback:")]
            outcome = info["status"] + (
                f" (compensated: {', '.join(rollbacks)})" if rollbacks else ""
            )
            duplicate = (
                "created once, then attached" if run["created"].count(True) == 1 else run["created"]
            )
            resumed = f" (stream resumed after {run['resumed_at']})" if "resumed_at" in run else ""
            print(
                f"order {order}: {outcome}; {duplicate}; {len(run['events'])} events{resumed};"
                f" trace {trace} seen by {', '.join(seen_by)}"
            )
        kinds = [kind for _, kind in runs["o-1"]["events"]]
        assert kinds.count("finished") == 1 and kinds[-1] == "finished", kinds
        ids = [event_id for event_id, _ in runs["o-1"]["events"]]
        assert ids == sorted(set(ids)), "a resumed stream repeats and skips nothing"
    finally:
        for service in services:
            service.send_signal(signal.SIGTERM)
        for service in services:
            try:
                service.wait(timeout=20)
            except subprocess.TimeoutExpired:
                service.kill()
        client = redis.Redis.from_url(URL)
        keys = list(client.scan_iter(match=f"{PREFIX}:*", count=1000))
        if keys:
            client.delete(*keys)
        client.close()
    print("stopped every service")


if __name__ == "__main__":
    main()
