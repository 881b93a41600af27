"""Private server processes for tests that stop, kill, pause or reconfigure a server.

The shared local stack (deploy/local/stack) serves everybody's tests at once, so a test
that breaks a server must break its own: these start redis-server, FerretDB (SQLite) and
a single-node KRaft Kafka broker on free loopback ports, each with its own data directory
under the test's tmp_path, from the same binaries and with the same flags as the stack.

Every server has start() / stop(kill=...) / restart() and a readiness wait (and async
twins astart / astop / arestart that run them in a thread, so a worker running in the
test's event loop is not frozen meanwhile). The fixtures at the bottom always stop what
they started; an atexit hook SIGKILLs anything left behind by an aborted session.

Import the fixtures a test module uses by name, e.g.
    from tests.integration.private_servers import private_servers  # noqa: F401
"""

from __future__ import annotations

import asyncio
import atexit
import base64
import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import time
import uuid
import weakref
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest

from badge_worker.settings import Settings

REPO = Path(__file__).resolve().parents[2]
LOCAL = REPO / "deploy" / "local"
STACK_CACHE = Path(os.environ.get("STACK_CACHE")
                   or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "badge-worker")
FERRETDB_VERSION = "v1.24.2"  # as deploy/local/stack
KAFKA_HEAP = ("-Xms128m", "-Xmx512m")  # the stack gives its shared broker 1g; a private one needs less

_LIVE: weakref.WeakSet[PrivateServer] = weakref.WeakSet()
S = TypeVar("S", bound="PrivateServer")


def free_port() -> int:
    """A loopback port nobody listens on right now (the OS picks it)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def port_open(port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout):
            return True
    except OSError:
        return False


def kafka_version() -> str:
    pom = (LOCAL / "kafka" / "pom.xml").read_text()
    found = re.search(r"<kafka.version>(.*?)</kafka.version>", pom)
    assert found, "deploy/local/kafka/pom.xml names kafka.version"
    return found.group(1)


class ServerDied(RuntimeError):
    pass


class PrivateServer:
    """One server process; subclasses say how to launch it and when it is ready."""

    name = "server"
    ready_timeout = 60.0
    free_port = staticmethod(free_port)  # for tests that only get the fixture

    def __init__(self, root: Path, port: int | None = None) -> None:
        self.root = root
        self.port = port or free_port()
        self.data_dir = root / "data"
        self.log_path = root / f"{self.name}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0
        root.mkdir(parents=True, exist_ok=True)
        self.data_dir.mkdir(parents=True, exist_ok=True)

    # ---- to override
    def command(self) -> list[str]:
        raise NotImplementedError

    def prepare(self) -> None:
        """Runs before each start (write config files, format storage...)."""

    def ready(self) -> bool:
        return port_open(self.port)

    # ---- lifecycle
    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def start(self, timeout: float | None = None) -> None:
        """Launch and wait until it answers."""
        if self.alive:
            return
        self.launch()
        self.wait_ready(timeout or self.ready_timeout)

    def launch(self) -> None:
        """Start the process without waiting for it (see wait_ready)."""
        if self.alive:
            return
        self.prepare()
        deadline = time.monotonic() + 15
        while port_open(self.port):  # the previous process's port may linger a moment
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.name}: 127.0.0.1:{self.port} is taken by someone else")
            time.sleep(0.2)
        with self.log_path.open("ab") as log:
            log.write(f"\n---- start #{self.starts + 1} at {time.strftime('%H:%M:%S')}\n".encode())
            self.proc = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, start_new_session=True)
        self.starts += 1
        _LIVE.add(self)

    def wait_ready(self, timeout: float | None = None) -> None:
        timeout = timeout or self.ready_timeout
        deadline = time.monotonic() + timeout
        while True:
            if not self.alive:
                raise ServerDied(f"{self.name} exited with {self.proc and self.proc.returncode}: {self.log_tail()}")
            with contextlib.suppress(Exception):
                if self.ready():
                    return
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.name} not ready within {timeout}s: {self.log_tail()}")
            time.sleep(0.2)

    def stop(self, kill: bool = False, timeout: float = 30.0) -> None:
        """SIGTERM and wait (SIGKILL after `timeout`), or SIGKILL at once with kill=True."""
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(30)

    def restart(self, kill: bool = False, down_for: float = 0.0) -> None:
        self.stop(kill=kill)
        if down_for:
            time.sleep(down_for)
        self.start()

    def pause(self) -> None:
        """SIGSTOP: the server holds its connections but answers nothing."""
        if self.proc is not None:
            self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        if self.proc is not None:
            self.proc.send_signal(signal.SIGCONT)

    # ---- from async tests: the event loop (and a worker in it) keeps running meanwhile
    async def astart(self) -> None:
        await asyncio.to_thread(self.start)

    async def astop(self, kill: bool = False) -> None:
        await asyncio.to_thread(self.stop, kill)

    async def arestart(self, kill: bool = False, down_for: float = 0.0) -> None:
        await asyncio.to_thread(self.restart, kill, down_for)

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def __enter__(self) -> PrivateServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop(kill=True)


class PrivateRedis(PrivateServer):
    """redis-server in the foreground, no persistence unless asked: options are redis-server
    flags without the dashes, e.g. PrivateRedis(p, maxmemory="64mb", appendonly="yes")."""

    name = "redis"
    ready_timeout = 30.0

    def __init__(self, root: Path, *, port: int | None = None, options: dict[str, str] | None = None,
                 **more: str) -> None:
        super().__init__(root, port)
        self.options: dict[str, str] = {"save": "", "appendonly": "no", "maxmemory-policy": "noeviction"}
        self.options.update({k.replace("_", "-"): str(v) for k, v in {**(options or {}), **more}.items()})

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def command(self) -> list[str]:
        binary = shutil.which("redis-server")
        assert binary, "redis-server comes from Debian (deploy/local/stack installs it)"
        args = [binary, "--bind", "127.0.0.1", "--port", str(self.port), "--dir", str(self.data_dir)]
        for key, value in self.options.items():
            args += [f"--{key}", value]
        return args

    def ready(self) -> bool:
        return self.client().ping() is True  # LOADING raises until the data set is in

    def client(self) -> Any:
        """A synchronous client (for CONFIG SET, REPLICAOF, CLIENT PAUSE, FLUSHALL...)."""
        import redis

        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=5, socket_connect_timeout=2)

    def wipe(self) -> None:
        """Remove the data files (so that the next start is empty whatever the options)."""
        assert not self.alive
        shutil.rmtree(self.data_dir, ignore_errors=True)
        self.data_dir.mkdir(parents=True)


class PrivateFerretDB(PrivateServer):
    """FerretDB built by deploy/local/stack, with the stack's flags, on its own SQLite files;
    or, with PRIVATE_FERRETDB_POSTGRESQL_URL set (e.g. the local stack's
    postgres://ferretdb@127.0.0.1:5432/ferretdb), on that PostgreSQL database: each test has
    its own MongoDB database (a PostgreSQL schema there), and a scan costs several times less
    than on SQLite, which the long chaos variant needs to finish (on SQLite its rate fell from
    ~150 to ~24 commands/s as its collections grew)."""

    name = "ferretdb"
    ready_timeout = 60.0

    @property
    def uri(self) -> str:
        return f"mongodb://127.0.0.1:{self.port}"

    @staticmethod
    def binary() -> Path:
        return STACK_CACHE / f"ferretdb-{FERRETDB_VERSION}" / "ferretdb"

    def command(self) -> list[str]:
        binary = self.binary()
        assert binary.exists(), f"{binary} is built by deploy/local/stack up"
        postgresql = os.environ.get("PRIVATE_FERRETDB_POSTGRESQL_URL")
        backend = (["--handler=postgresql", f"--postgresql-url={postgresql}"] if postgresql else
                   ["--handler=sqlite", f"--sqlite-url=file:{self.data_dir}/?_pragma=synchronous(normal)"])
        return [str(binary), *backend,
                f"--listen-addr=127.0.0.1:{self.port}", "--telemetry=disable", "--debug-addr=-",
                f"--state-dir={self.data_dir}", "--log-level=warn"]

    def ready(self) -> bool:
        if not port_open(self.port):
            return False
        from pymongo import MongoClient

        client: MongoClient[dict[str, Any]] = MongoClient(self.uri, serverSelectionTimeoutMS=1000,
                                                          connectTimeoutMS=1000)
        try:
            return bool(client.admin.command("ping").get("ok"))
        finally:
            client.close()


class PrivateKafka(PrivateServer):
    """A single-node KRaft broker+controller from the stack's jars, template and JVM flags."""

    name = "kafka"
    ready_timeout = 120.0

    def __init__(self, root: Path, *, port: int | None = None, controller_port: int | None = None,
                 overrides: dict[str, str] | None = None, **more: str) -> None:
        super().__init__(root, port)
        self.controller_port = controller_port or free_port()
        # A killed broker's registration lives until its session expires (9 s by default); a
        # restarted one cannot register before that: shorter, so a restart takes seconds.
        self.overrides = {"broker.session.timeout.ms": "3000", "broker.heartbeat.interval.ms": "500"}
        self.overrides.update({k.replace("_", "."): str(v) for k, v in {**(overrides or {}), **more}.items()})
        self.conf = root / "server.properties"
        self.logs_dir = root / "logs"
        self.logs_dir.mkdir(exist_ok=True)
        self.log_path = root / "kafka.stdout.log"

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    @staticmethod
    def libs() -> Path:
        return STACK_CACHE / f"kafka-{kafka_version()}" / "libs"

    def java_options(self) -> list[str]:
        libs = self.libs()
        assert (libs / ".complete").exists(), f"{libs} is filled by deploy/local/stack up"
        return ["-cp", f"{libs}/*", f"-Dlog4j2.configurationFile={LOCAL / 'kafka' / 'log4j2.properties'}",
                f"-Dkafka.logs.dir={self.logs_dir}"]

    def prepare(self) -> None:
        template = (LOCAL / "kafka" / "server.properties.in").read_text()
        text = (template.replace("@@KAFKA_PORT@@", str(self.port))
                .replace("@@CONTROLLER_PORT@@", str(self.controller_port))
                .replace("@@DATA_DIR@@", str(self.data_dir)))
        if self.overrides:
            text += "\n# test overrides\n" + "".join(f"{k}={v}\n" for k, v in self.overrides.items())
        self.conf.write_text(text)
        if not (self.data_dir / "meta.properties").exists():
            java = shutil.which("java")
            assert java, "Java 17 is installed by deploy/local/stack"
            done = subprocess.run([java, *self.java_options(), "kafka.tools.StorageTool", "format",
                                   "-t", random_cluster_id(), "-c", str(self.conf)],
                                  capture_output=True, text=True, timeout=120)
            if done.returncode != 0:
                raise RuntimeError(f"kafka storage format failed: {done.stdout}\n{done.stderr}")
        server_log = self.logs_dir / "server.log"
        self._server_log_mark = server_log.stat().st_size if server_log.exists() else 0

    def command(self) -> list[str]:
        java = shutil.which("java")
        assert java
        return [java, *KAFKA_HEAP, "-XX:+UseG1GC", *self.java_options(), "kafka.Kafka", str(self.conf)]

    def ready(self) -> bool:
        if not port_open(self.port):
            return False
        try:
            with (self.logs_dir / "server.log").open("rb") as log:
                log.seek(self._server_log_mark)
                return b"Kafka Server started" in log.read()
        except OSError:
            return False

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return (self.logs_dir / "server.log").read_text(errors="replace")[-chars:]
        except OSError:
            return super().log_tail(chars)


def random_cluster_id() -> str:
    """As `kafka-storage random-uuid`: 16 random bytes, URL-safe base64 without padding."""
    while True:
        text = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not text.startswith("-"):
            return text


@atexit.register
def _kill_leftovers() -> None:
    for server in list(_LIVE):
        with contextlib.suppress(Exception):
            if server.alive and server.proc is not None:
                server.resume()
                server.proc.kill()


# ---------------------------------------------------------------- settings


def private_settings(*, kafka: str, redis: str, mongodb: str, **overrides: Any) -> Settings:
    """Settings as the `settings` fixture of tests/conftest.py makes them (this test's own
    topics, group, key prefix and database), pointing at the given servers."""
    tag = uuid.uuid4().hex[:10]
    values: dict[str, Any] = dict(
        kafka_bootstrap_servers=kafka, redis_url=redis, mongodb_uri=mongodb,
        mongodb_database=f"t_{tag}", consumer_group=f"g-{tag}",
        topic_claims=f"t{tag}.claims", topic_earns=f"t{tag}.earns", topic_results=f"t{tag}.results",
        topic_errors=f"t{tag}.errors", topic_dlq=f"t{tag}.dlq", topic_events=f"t{tag}.events",
        redis_key_prefix=f"bw{tag}",
        topic_partitions=4, http_port=0, backoff_initial_s=0.2, backoff_max_s=2.0, badge_cache_ttl_s=0.2,
    )
    values.update(overrides)
    return Settings(**values)


@dataclass
class PrivateServers:
    """Starts private servers on demand under one folder; stop_all() ends every one of them."""

    root: Path
    started: list[PrivateServer] = field(default_factory=list)

    free_port = staticmethod(free_port)  # for tests that only get the fixture

    def _folder(self, name: str) -> Path:
        n = sum(1 for s in self.started if s.name == name)
        return self.root / (name if n == 0 else f"{name}{n + 1}")

    def redis(self, *, wait: bool = True, **options: str) -> PrivateRedis:
        return self._start(PrivateRedis(self._folder("redis"), options=options), wait)

    def ferretdb(self, *, wait: bool = True) -> PrivateFerretDB:
        return self._start(PrivateFerretDB(self._folder("ferretdb")), wait)

    def kafka(self, *, wait: bool = True, **overrides: str) -> PrivateKafka:
        return self._start(PrivateKafka(self._folder("kafka"), overrides=overrides), wait)

    def _start(self, server: S, wait: bool) -> S:
        self.started.append(server)
        server.launch()
        if wait:
            server.wait_ready()
        return server

    def stack(self, **settings: Any) -> PrivateStack:
        """All three, started at once (Kafka takes longest), and Settings pointing at them."""
        kafka = self.kafka(wait=False)
        redis = self.redis(wait=False)
        ferretdb = self.ferretdb(wait=False)
        for server in (redis, ferretdb, kafka):
            server.wait_ready()
        return PrivateStack(redis, ferretdb, kafka, private_settings(
            kafka=kafka.bootstrap, redis=redis.url, mongodb=ferretdb.uri, **settings))

    def stop_all(self) -> None:
        for server in reversed(self.started):
            with contextlib.suppress(Exception):
                server.resume()  # a SIGSTOPped server would not die of SIGTERM
                server.stop(kill=True)


@dataclass
class PrivateStack:
    redis: PrivateRedis
    ferretdb: PrivateFerretDB
    kafka: PrivateKafka
    settings: Settings


# ---------------------------------------------------------------- fixtures


@pytest.fixture
def private_servers(tmp_path: Path) -> Iterator[PrivateServers]:
    """A factory of private servers, all stopped (SIGKILL) when the test ends."""
    servers = PrivateServers(tmp_path / "servers")
    try:
        yield servers
    finally:
        servers.stop_all()


@pytest.fixture
def private_redis(private_servers: PrivateServers) -> PrivateRedis:
    return private_servers.redis()


@pytest.fixture
def private_ferretdb(private_servers: PrivateServers) -> PrivateFerretDB:
    return private_servers.ferretdb()


@pytest.fixture
def private_kafka(private_servers: PrivateServers) -> PrivateKafka:
    return private_servers.kafka()


@pytest.fixture
def private_stack(private_servers: PrivateServers) -> PrivateStack:
    """Redis, FerretDB and Kafka of this test only, and Settings pointing at them."""
    return private_servers.stack()
