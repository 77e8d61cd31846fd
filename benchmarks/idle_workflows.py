"""What an idle worker costs with N registered workflows: start time, connections, commands/s, CPU.

Starts a Redis of its own (one server, or a 3-master Redis Cluster with ``--cluster``) on free
ports in a temporary folder, registers N one-step workflows on one provider, starts it and
reports:

- ``start_s``: how long ``start()`` took (``null`` when it did not finish within the limit);
- ``connections``: clients connected to Redis while idle (CLIENT LIST on every node, minus this
  script's own measuring connection);
- ``commands_per_s``: Redis commands processed per second while idle (INFO stats
  ``total_commands_processed``, summed over the nodes, minus the measuring calls);
- ``cpu_percent``: this process's CPU while idle (nothing else runs in it);
- ``pickup_ms``: how long a run of the last-registered workflow then took from ``execute`` to
  its step starting.

Usage::

    python benchmarks/idle_workflows.py --counts 1,200,1000,5000 [--cluster] [--idle 10]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import redis as sync_redis
from pydantic import BaseModel

from plait.providers.redis import RedisWorkflowProvider
from plait.workflows import StepContext, Workflow, WorkflowConsumer


class Unit(BaseModel):
    n: int = 0


def _free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _ports(count: int) -> list[int]:
    ports: list[int] = []
    while len(ports) < count:
        port = random.randint(20_000, 45_000)
        if port not in ports and _free(port) and _free(port + 10_000):
            ports.append(port)
    return ports


def _until(check: Any, what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        time.sleep(0.05)


class Servers:
    """Redis servers of this script's own: one, or three cluster masters."""

    def __init__(self, folder: Path, *, cluster: bool) -> None:
        self.folder, self.cluster = folder, cluster
        self.ports = _ports(3 if cluster else 1)
        for port in self.ports:
            (folder / str(port)).mkdir()
            extra = ["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf"]
            subprocess.run(
                [
                    shutil.which("redis-server") or "redis-server",
                    *("--port", str(port), "--bind", "127.0.0.1", "--maxclients", "20000"),
                    *("--dir", str(folder / str(port)), "--save", "", "--appendonly", "no"),
                    *("--daemonize", "yes", "--logfile", str(folder / str(port) / "log")),
                    *(extra if cluster else []),
                ],
                check=True,
            )
        nodes = [sync_redis.Redis(port=port) for port in self.ports]
        try:
            self._form(nodes)
        except BaseException:
            self.stop()  # servers that never formed a cluster are not left running
            raise
        self.nodes = nodes

    def _form(self, nodes: list[sync_redis.Redis]) -> None:
        _until(lambda: all(self._pong(n) for n in nodes), "nodes answer")
        if self.cluster:
            subprocess.run(
                [
                    *("redis-cli", "--cluster", "create"),
                    *(f"127.0.0.1:{port}" for port in self.ports),
                    *("--cluster-replicas", "0", "--cluster-yes"),
                ],
                check=True,
                capture_output=True,
            )
            _until(lambda: all(self._ok(n) for n in nodes), "cluster ok")

    @staticmethod
    def _ok(node: sync_redis.Redis) -> bool:
        info = node.execute_command("CLUSTER INFO")  # type: ignore[no-untyped-call]
        return (
            b"cluster_state:ok" in info
            if isinstance(info, bytes)
            else info["cluster_state"] == "ok"
        )

    @staticmethod
    def _pong(node: sync_redis.Redis) -> bool:
        try:
            return bool(node.ping())
        except sync_redis.RedisError:
            return False

    @property
    def url(self) -> str:
        if self.cluster:
            return f"redis+cluster://127.0.0.1:{self.ports[0]}"
        return f"redis://127.0.0.1:{self.ports[0]}"

    def connections(self) -> int:
        return sum(len(n.client_list()) - 1 for n in self.nodes)

    def commands(self) -> int:
        return sum(int(n.info("stats")["total_commands_processed"]) for n in self.nodes)

    def stop(self) -> None:
        for port in self.ports:
            subprocess.run(["redis-cli", "-p", str(port), "shutdown", "nosave"], check=False)


async def measure(
    url: str, servers: Servers, count: int, idle: float, limit: float
) -> dict[str, Any]:
    started = asyncio.Event()
    provider = RedisWorkflowProvider.from_url(url, prefix=f"idle{count}")
    definitions = []
    for i in range(count):
        definition = Workflow(f"w{i}", input=Unit).step("only")
        consumer = WorkflowConsumer(definition)

        @consumer.step("only")
        async def only(ctx: StepContext[Unit]) -> None:
            started.set()

        provider.register(consumer)
        definitions.append(definition)
    result: dict[str, Any] = {"workflows": count}
    t0 = time.monotonic()
    try:
        await asyncio.wait_for(provider.start(), limit)
    except Exception as error:  # a benchmark reports what happened
        result.update(start_s=None, error=f"{type(error).__name__}: {error}"[:200])
        with contextlib.suppress(Exception):
            await asyncio.wait_for(provider.stop(), 30)
        return result
    result["start_s"] = round(time.monotonic() - t0, 2)
    try:
        await asyncio.sleep(min(idle, 3))  # let start-up work settle
        commands, cpu, wall = servers.commands(), time.process_time(), time.monotonic()
        await asyncio.sleep(idle)
        wall = time.monotonic() - wall
        cpu = time.process_time() - cpu
        commands = servers.commands() - commands - len(servers.nodes)  # minus INFO itself
        result["connections"] = servers.connections()
        result["commands_per_s"] = round(commands / wall, 1)
        result["cpu_percent"] = round(100 * cpu / wall, 2)
        t1 = time.monotonic()
        await provider.execute(definitions[-1], {"n": 1})
        await asyncio.wait_for(started.wait(), 30)
        result["pickup_ms"] = round((time.monotonic() - t1) * 1000, 1)
    finally:
        await provider.stop()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--counts", default="1,200,1000,5000")
    parser.add_argument("--cluster", action="store_true")
    parser.add_argument("--idle", type=float, default=10.0, help="seconds measured while idle")
    parser.add_argument("--limit", type=float, default=120.0, help="longest start() waited for")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        servers = Servers(Path(folder), cluster=args.cluster)
        try:
            for count in (int(c) for c in args.counts.split(",")):
                row = asyncio.run(measure(servers.url, servers, count, args.idle, args.limit))
                row["backend"] = "cluster" if args.cluster else "redis"
                print(json.dumps(row), flush=True)
                for node in servers.nodes:
                    node.flushall()
        finally:
            servers.stop()


if __name__ == "__main__":
    main()
