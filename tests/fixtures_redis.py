"""Real ``redis-server`` processes for tests: one server, a 3-master cluster, a sentinel.

Registered for every test by ``pytest_plugins`` in tests/conftest.py. Servers run in a temp
directory on a free loopback port with persistence off (``--save '' --appendonly no``).
``RedisServer`` can be stopped and started again on the same port, to kill Redis mid-traffic and
bring it back. Nothing here is a mock.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.local import free_port

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"
REDIS_CLI = shutil.which("redis-cli") or "/usr/bin/redis-cli"


def free_cluster_port() -> int:
    """A free port whose cluster bus port (port + 10000) is free too and within range."""
    for _ in range(200):
        port = free_port()
        if port > 55535:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        return port
    raise RuntimeError("no free port pair for a cluster node")


def _command(port: int, *words: str, timeout: float = 0.5) -> str | None:
    """Send one inline command; the first reply line, or None when nothing answers."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
            sock.sendall((" ".join(words) + "\r\n").encode())
            data = b""
            while not data.endswith(b"\r\n"):
                chunk = sock.recv(65536)
                if not chunk:
                    break
                data += chunk
            return data.decode(errors="replace")
    except OSError:
        return None


class RedisServer:
    """One ``redis-server`` on ``127.0.0.1:port``; ``stop``/``start`` keep the port."""

    def __init__(self, directory: Path, port: int | None = None, *extra: str) -> None:
        self.directory = directory
        self.port = port or free_port()
        self.extra = extra
        self.process: subprocess.Popen[bytes] | None = None
        directory.mkdir(parents=True, exist_ok=True)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> None:
        if self.process is not None:
            raise RuntimeError("already running")
        self.process = subprocess.Popen(
            [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1",
             "--save", "", "--appendonly", "no", "--dir", str(self.directory),
             "--logfile", str(self.directory / "redis.log"), "--protected-mode", "no",
             "--enable-debug-command", "local",
             *self.extra],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if (self.process.poll()) is not None:
                log = (self.directory / "redis.log").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"redis-server exited with {self.process.returncode}: {log}")
            if (_command(self.port, "PING") or "").startswith("+PONG"):
                return
            time.sleep(0.01)
        self.stop()
        raise RuntimeError(f"redis-server on port {self.port} did not answer PING")

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is None:
            return
        process.kill()  # SIGKILL: the test wants a crash, not a graceful shutdown
        process.wait(timeout=10)

    def restart(self) -> None:
        self.stop()
        self.start()

    def command(self, *words: str) -> str | None:
        return _command(self.port, *words)


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A running ``redis-server``; the test may stop, start and restart it."""
    server = RedisServer(tmp_path / "redis")
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    return redis_server.url


class RedisClusterProcesses:
    def __init__(self, servers: list[RedisServer]) -> None:
        self.servers = servers

    @property
    def url(self) -> str:
        """The ``redis+cluster://`` URL ``proxy.redisconn`` reads."""
        return "redis+cluster://" + ",".join(f"127.0.0.1:{s.port}" for s in self.servers)


@pytest.fixture(scope="module")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisClusterProcesses]:
    """Three masters on loopback, no replicas, all 16384 slots assigned."""
    base = tmp_path_factory.mktemp("cluster")
    servers = []
    try:
        for index in range(3):
            port = free_cluster_port()
            server = RedisServer(
                base / f"node{index}", port, "--cluster-enabled", "yes",
                "--cluster-config-file", f"nodes-{port}.conf", "--cluster-node-timeout", "2000",
            )
            server.start()
            servers.append(server)
        subprocess.run(
            [REDIS_CLI, "--cluster", "create",
             *(f"127.0.0.1:{s.port}" for s in servers),
             "--cluster-replicas", "0", "--cluster-yes"],
            check=True, capture_output=True, timeout=30,
        )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            states = [_bulk(s.port, "CLUSTER", "INFO") for s in servers]
            if all("cluster_state:ok" in state for state in states):
                break
            time.sleep(0.05)
        else:
            raise RuntimeError("the cluster did not reach cluster_state:ok")
        yield RedisClusterProcesses(servers)
    finally:
        for server in servers:
            server.stop()


def _bulk(port: int, *words: str) -> str:
    """The whole reply of a command answering with one bulk string."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
            sock.sendall((" ".join(words) + "\r\n").encode())
            data = b""
            while True:
                chunk = sock.recv(65536)
                data += chunk
                if not chunk:
                    break
                header, _, rest = data.partition(b"\r\n")
                if header.startswith(b"$") and len(rest) >= int(header[1:]) + 2:
                    break
                if not header.startswith(b"$") and data.endswith(b"\r\n"):
                    break
            return data.decode(errors="replace")
    except OSError:
        return ""


class SentinelProcess:
    def __init__(self, directory: Path, master: RedisServer, service: str) -> None:
        self.port = free_port()
        self.service = service
        config = directory / "sentinel.conf"
        directory.mkdir(parents=True, exist_ok=True)
        config.write_text(
            f"port {self.port}\nbind 127.0.0.1\nprotected-mode no\ndir {directory}\n"
            f"logfile {directory / 'sentinel.log'}\n"
            f"sentinel monitor {service} 127.0.0.1 {master.port} 1\n"
            f"sentinel down-after-milliseconds {service} 5000\n"
        )
        self.process = subprocess.Popen(
            [REDIS_SERVER, str(config), "--sentinel"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            reply = _command(self.port, "SENTINEL", "get-master-addr-by-name", service) or ""
            if str(master.port) in reply or reply.startswith("*2"):
                return
            time.sleep(0.02)
        self.stop()
        raise RuntimeError("redis sentinel did not start")

    def stop(self) -> None:
        self.process.kill()
        self.process.wait(timeout=10)


@pytest.fixture
def redis_sentinel(tmp_path: Path, redis_server: RedisServer) -> Iterator[SentinelProcess]:
    """A sentinel (``redis-server --sentinel``) monitoring ``redis_server`` as ``cart-cache``."""
    sentinel = SentinelProcess(tmp_path / "sentinel", redis_server, "cart-cache")
    try:
        yield sentinel
    finally:
        sentinel.stop()
