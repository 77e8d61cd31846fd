"""A Redis Cluster of a test's own: 3 masters, optionally password-protected or TLS-only, whose
slots the test can move by hand (the steps ``redis-cli --cluster reshard`` takes, one batch at
a time)."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis as sync_redis
from conftest import _free_ports, redis_server


@dataclass
class LocalCluster:
    """Three masters on free ports under ``folder``."""

    folder: Path
    password: str | None = None
    tls: bool = False
    """Nodes (and the cluster bus) speak TLS only, with a certificate of a CA made here."""
    ports: list[int] = field(default_factory=list)
    duplicates: list[str] = field(default_factory=list)
    """Keys a slot move found on both nodes (a script created a second copy on the target)."""

    @property
    def ca(self) -> Path:
        """The CA certificate the nodes' certificates are signed with (``tls``)."""
        return self.folder / "ca.crt"

    @property
    def url(self) -> str:
        """The plait URL of the cluster."""
        auth = f":{self.password}@" if self.password else ""
        if self.tls:
            return f"rediss+cluster://{auth}127.0.0.1:{self.ports[0]}?ssl_ca_certs={self.ca}"
        return f"redis+cluster://{auth}127.0.0.1:{self.ports[0]}"

    def node(self, port: int) -> Any:
        """A plain client of one node (``execute_command`` is untyped in redis-py)."""
        tls: dict[str, Any] = {"ssl": True, "ssl_ca_certs": str(self.ca)} if self.tls else {}
        return sync_redis.Redis(port=port, password=self.password, socket_timeout=10, **tls)

    def cli(self, *args: str) -> subprocess.CompletedProcess[bytes]:
        auth = ("-a", self.password, "--no-auth-warning") if self.password else ()
        tls = ("--tls", "--cacert", str(self.ca)) if self.tls else ()
        return subprocess.run(["redis-cli", *auth, *tls, *args], capture_output=True, check=False)

    def start(self) -> None:
        binary = redis_server()
        self.ports = _free_ports(3)
        options: list[str] = []
        if self.password:
            options += ["--requirepass", self.password, "--masterauth", self.password]
        if self.tls:
            certify(self.folder, "IP:127.0.0.1,DNS:localhost")
            options += [
                *("--tls-cluster", "yes", "--tls-auth-clients", "no"),
                *("--tls-cert-file", str(self.folder / "node.crt")),
                *("--tls-key-file", str(self.folder / "node.key")),
                *("--tls-ca-cert-file", str(self.ca)),
            ]
        for port in self.ports:
            (self.folder / str(port)).mkdir(parents=True)
            listen = ("--port", "0", "--tls-port", str(port)) if self.tls else ("--port", str(port))
            subprocess.run(
                [
                    *(binary, *listen, "--bind", "127.0.0.1"),
                    *("--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf"),
                    *("--dir", str(self.folder / str(port)), "--save", "", "--appendonly", "no"),
                    *("--daemonize", "yes", "--logfile", str(self.folder / str(port) / "log")),
                    *options,
                ],
                check=True,
            )
        _until(lambda: all(self._pong(port) for port in self.ports), "nodes answer")
        created = self.cli(
            *("--cluster", "create", *(f"127.0.0.1:{port}" for port in self.ports)),
            *("--cluster-replicas", "0", "--cluster-yes"),
        )
        assert created.returncode == 0, created.stderr
        _until(self._ok, "cluster state ok")

    def stop(self) -> None:
        for port in self.ports:
            self.cli("-p", str(port), "shutdown", "nosave")

    def _pong(self, port: int) -> bool:
        return self.cli("-p", str(port), "ping").stdout.strip() == b"PONG"

    def _ok(self) -> bool:
        return all(
            b"cluster_state:ok" in self.cli("-p", str(port), "cluster", "info").stdout
            for port in self.ports
        )

    def owner(self, slot: int) -> int:
        """The port of the node serving ``slot``."""
        for low, high, primary, *_ in self.node(self.ports[0]).execute_command("CLUSTER SLOTS"):
            if low <= slot <= high:
                return int(primary[1])
        raise LookupError(slot)

    def move(
        self, slot: int, to: int, *, batch: int = 3, pause: float = 0.02, timeout: float = 30
    ) -> int:
        """Move ``slot`` to the node on port ``to``, ``batch`` keys per MIGRATE, sleeping
        ``pause`` s between batches while clients keep working; returns the keys moved.

        A key that already exists on the target (a second copy made during the move) is
        recorded in :attr:`duplicates` and moved over it (``REPLACE``), as
        ``redis-cli --cluster fix`` would.
        """
        source_port = self.owner(slot)
        source, target = self.node(source_port), self.node(to)
        source_id = source.execute_command("CLUSTER MYID").decode()
        target_id = target.execute_command("CLUSTER MYID").decode()
        target.execute_command("CLUSTER SETSLOT", slot, "IMPORTING", source_id)
        source.execute_command("CLUSTER SETSLOT", slot, "MIGRATING", target_id)
        auth = ("AUTH", self.password) if self.password else ()
        moved = 0
        deadline = time.monotonic() + timeout
        while True:
            keys = source.execute_command("CLUSTER GETKEYSINSLOT", slot, batch)
            if not keys:
                try:  # the target first, then the source (which refuses while it holds keys)
                    target.execute_command("CLUSTER SETSLOT", slot, "NODE", target_id)
                    source.execute_command("CLUSTER SETSLOT", slot, "NODE", target_id)
                    break
                except sync_redis.ResponseError:
                    assert time.monotonic() < deadline, "the source kept getting keys"
                    continue
            try:
                source.execute_command(
                    "MIGRATE", "127.0.0.1", to, "", 0, 5000, *auth, "KEYS", *keys
                )
            except sync_redis.ResponseError as error:
                if "BUSYKEY" not in str(error):
                    raise
                self.duplicates += [str(key) for key in keys if _importing(target, key)]
                source.execute_command(
                    "MIGRATE", "127.0.0.1", to, "", 0, 5000, "REPLACE", *auth, "KEYS", *keys
                )
            moved += len(keys)
            time.sleep(pause)
        for port in self.ports:
            if port not in (source_port, to):
                self.node(port).execute_command("CLUSTER SETSLOT", slot, "NODE", target_id)
        return moved


def certify(folder: Path, names: str) -> None:
    """``ca.crt`` (a CA made here) and ``node.crt``/``node.key``, a certificate it signed for
    ``names`` (a subjectAltName such as ``IP:127.0.0.1,DNS:localhost``), in ``folder``."""
    ca, ca_key, key, csr, crt, ext = (
        folder / name for name in ("ca.crt", "ca.key", "node.key", "node.csr", "node.crt", "ext")
    )
    ext.write_text(f"subjectAltName={names}\n")
    new_key = ("-newkey", "rsa:2048", "-nodes", "-days", "1")
    signed_by = ("-CA", ca, "-CAkey", ca_key, "-CAcreateserial")
    for command in (
        ("req", "-x509", *new_key, "-keyout", ca_key, "-out", ca, "-subj", "/CN=test CA"),
        ("req", *new_key, "-keyout", key, "-out", csr, "-subj", "/CN=localhost"),
        ("x509", "-req", "-in", csr, *signed_by, "-days", "1", "-out", crt, "-extfile", ext),
    ):
        subprocess.run(["openssl", *map(str, command)], check=True, capture_output=True)


@contextmanager
def tls_server(folder: Path, *, password: str) -> Iterator[int]:
    """One Redis speaking TLS only, with a password, whose certificate names ``localhost``
    but not 127.0.0.1 (clients must skip the hostname check); yields its port."""
    binary = redis_server()
    certify(folder, "DNS:localhost")
    port = _free_ports(1)[0]
    tls = ("--tls", "--cacert", str(folder / "ca.crt"), "-p", str(port), "-a", password)
    subprocess.run(
        [
            *(binary, "--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1"),
            *("--tls-cert-file", str(folder / "node.crt"), "--tls-auth-clients", "no"),
            *("--tls-key-file", str(folder / "node.key")),
            *("--tls-ca-cert-file", str(folder / "ca.crt"), "--requirepass", password),
            *("--dir", str(folder), "--save", "", "--appendonly", "no"),
            *("--daemonize", "yes", "--logfile", str(folder / "log")),
        ],
        check=True,
    )

    def answers() -> bool:
        done = subprocess.run(
            ["redis-cli", *tls, "--no-auth-warning", "--insecure", "ping"],
            capture_output=True,
            check=False,
        )
        return done.stdout.strip() == b"PONG"

    try:
        _until(answers, "the TLS server answers")
        yield port
    finally:
        subprocess.run(
            ["redis-cli", *tls, "--no-auth-warning", "--insecure", "shutdown", "nosave"],
            capture_output=True,
            check=False,
        )


@contextmanager
def local_cluster(
    folder: Path, *, password: str | None = None, tls: bool = False
) -> Iterator[LocalCluster]:
    """A started :class:`LocalCluster`, shut down afterwards."""
    cluster = LocalCluster(folder, password, tls)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


def _importing(node: Any, key: str) -> bool:
    """Whether ``node``, importing the key's slot, has ``key`` (asked with ASKING)."""
    connection: Any = node.connection_pool.get_connection()
    try:
        connection.send_command("ASKING")
        connection.read_response()
        connection.send_command("EXISTS", key)
        return bool(connection.read_response())
    finally:
        node.connection_pool.release(connection)


def _until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + 20
    while not condition():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting: {what}")
        time.sleep(0.05)
