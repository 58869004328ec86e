"""Where the CLI's databases come from: the user's servers, or the embedded default it owns.

With RETENTION_DATABASE_URL unset, one embedded PostgreSQL serves two databases: the demo app
(`retention_demo`) and Dagster's own storage (`dagster`). The process that starts it owns it and
stops it on exit, Ctrl-C or SIGTERM included; child processes it starts (dagster dev) are recorded
so that a launcher killed with SIGKILL leaves nothing a later launcher cannot clean up.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import json
import os
import secrets
import signal
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil

from retention_pipeline.db import check_reachable
from retention_pipeline.errors import LauncherError
from retention_pipeline.local.embedded import EmbeddedPostgres, process_alive
from retention_pipeline.local.localstripe import LOCALSTRIPE_API_KEY, LocalStripe
from retention_pipeline.settings import PROJECT_ROOT, STATE_DIR, check_environment

DEMO_APP_DATABASE = "retention_demo"
DAGSTER_DATABASE = "dagster"
_PR_SET_PDEATHSIG = 1


@dataclass
class Environment:
    app_database_url: str
    dagster_pg_url: str
    dagster_home: Path
    embedded: EmbeddedPostgres | None
    notes: list[str]
    local_stripe: LocalStripe | None = None

    @property
    def is_embedded(self) -> bool:
        return self.embedded is not None


def _raise_keyboard_interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def install_signal_handlers() -> None:
    """SIGTERM unwinds like Ctrl-C, so every `finally` runs and the embedded server is stopped."""
    signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
    signal.signal(signal.SIGINT, signal.default_int_handler)


@contextlib.contextmanager
def environment(state_dir: Path = STATE_DIR) -> Iterator[Environment]:
    """Set RETENTION_DATABASE_URL, DAGSTER_PG_URL and DAGSTER_HOME for this process and its children."""
    state_dir.mkdir(parents=True, exist_ok=True)
    dagster_home = _prepare_dagster_home(state_dir)
    notes: list[str] = []
    user_app_url = os.environ.get("RETENTION_DATABASE_URL")
    if user_app_url:
        check_environment()  # DAGSTER_PG_URL is required with it, and both must be PostgreSQL URLs
        dagster_url = os.environ["DAGSTER_PG_URL"]
        check_reachable("RETENTION_DATABASE_URL", user_app_url)
        check_reachable("DAGSTER_PG_URL", dagster_url)
        yield Environment(user_app_url, dagster_url, dagster_home, None, notes)
        return

    ChildProcesses(state_dir).reap_orphans(notes)
    _ensure_demo_unsubscribe_secret(state_dir)
    with (
        _local_stripe_unless_configured(state_dir) as local_stripe,
        _embedded_databases(state_dir, notes) as (server, app_url, dagster_url),
    ):
        yield Environment(app_url, dagster_url, dagster_home, server, notes, local_stripe)


def _ensure_demo_unsubscribe_secret(state_dir: Path) -> None:
    """The embedded default signs unsubscribe links with a random key kept in the state folder."""
    if os.environ.get("RETENTION_UNSUBSCRIBE_SECRET"):
        return
    path = state_dir / "unsubscribe_secret"
    if not path.exists():
        path.write_text(secrets.token_urlsafe(32))
        path.chmod(0o600)
    os.environ["RETENTION_UNSUBSCRIBE_SECRET"] = path.read_text().strip()


@contextlib.contextmanager
def _local_stripe_unless_configured(state_dir: Path) -> Iterator[LocalStripe | None]:
    """With no STRIPE_API_KEY, a local Stripe-compatible server (localstripe) stands in for Stripe."""
    if os.environ.get("STRIPE_API_KEY"):
        yield None
        return
    with LocalStripe(state_file=state_dir / "localstripe" / "state.pickle") as server:
        os.environ["STRIPE_API_KEY"] = LOCALSTRIPE_API_KEY
        os.environ["STRIPE_API_BASE"] = server.api_base
        try:
            yield server
        finally:
            os.environ.pop("STRIPE_API_KEY", None)
            os.environ.pop("STRIPE_API_BASE", None)


@contextlib.contextmanager
def _embedded_databases(state_dir: Path, notes: list[str]):
    server = EmbeddedPostgres(state_dir / "pgdata")
    status = server.start()
    if status.adopted_stale_pid:
        notes.append(f"Recovered an embedded PostgreSQL (pid {status.adopted_stale_pid}) left running by an earlier, killed run.")
    if not status.owner:
        notes.append(f"Using the embedded PostgreSQL owned by another retention-pipeline process (pid {server.owner_pid()}).")
    try:
        server.ensure_database(DEMO_APP_DATABASE)
        server.ensure_database(DAGSTER_DATABASE)
        os.environ["RETENTION_DATABASE_URL"] = server.url(DEMO_APP_DATABASE)
        os.environ["DAGSTER_PG_URL"] = server.url(DAGSTER_DATABASE)
        yield server, server.url(DEMO_APP_DATABASE), server.url(DAGSTER_DATABASE)
    finally:
        os.environ.pop("RETENTION_DATABASE_URL", None)
        os.environ.pop("DAGSTER_PG_URL", None)
        server.stop()


def _prepare_dagster_home(state_dir: Path) -> Path:
    if os.environ.get("DAGSTER_HOME"):
        home = Path(os.environ["DAGSTER_HOME"]).resolve()
        if not (home / "dagster.yaml").exists():
            raise LauncherError(f"DAGSTER_HOME={home} has no dagster.yaml; copy the project's dagster.yaml there.")
    else:
        home = state_dir / "dagster_home"
        home.mkdir(parents=True, exist_ok=True)
        link = home / "dagster.yaml"
        # A link, not a copy: the project's dagster.yaml stays the one place instance settings live.
        if not link.is_symlink() or link.resolve() != (PROJECT_ROOT / "dagster.yaml").resolve():
            link.unlink(missing_ok=True)
            link.symlink_to(PROJECT_ROOT / "dagster.yaml")
    os.environ["DAGSTER_HOME"] = str(home)
    return home


def _die_with_parent() -> None:
    # Linux only: the child gets SIGTERM if the launcher dies, even by SIGKILL.
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


class ChildProcesses:
    """Long-running children (dagster dev) recorded on disk with the launcher that started them, so a
    later launcher stops the orphans of a killed one and leaves the children of a running one alone."""

    def __init__(self, state_dir: Path):
        self.path = state_dir / "children.json"
        self._lock_path = state_dir / "children.lock"

    @contextlib.contextmanager
    def _records(self) -> Iterator[list[dict]]:
        """The records, under a lock: two launchers must not overwrite each other's entries."""
        with open(self._lock_path, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                records = json.loads(self.path.read_text())
            except (FileNotFoundError, json.JSONDecodeError):
                records = []
            yield records
            self.path.write_text(json.dumps(records))

    def start(self, args: list[str], **popen_kwargs) -> subprocess.Popen:
        process = subprocess.Popen(args, start_new_session=True, preexec_fn=_die_with_parent, **popen_kwargs)
        launcher = psutil.Process()
        with self._records() as records:
            records.append(
                {
                    "pid": process.pid,
                    "create_time": psutil.Process(process.pid).create_time(),
                    "launcher_pid": launcher.pid,
                    "launcher_create_time": launcher.create_time(),
                }
            )
        return process

    def stop(self, process: subprocess.Popen, timeout: float = 30.0) -> None:
        """Stop the child's whole process group: dagster dev's webserver, daemon and code servers."""
        _terminate_group(process.pid, timeout)
        with self._records() as records:
            records[:] = [c for c in records if c["pid"] != process.pid]

    def reap_orphans(self, notes: list[str]) -> None:
        """Stop children whose launcher is gone; keep those of a launcher that still runs (`dev`)."""
        with self._records() as records:
            kept = []
            for child in records:
                if not process_alive(child["pid"], child["create_time"]):
                    continue
                if "launcher_pid" in child and process_alive(child["launcher_pid"], child["launcher_create_time"]):
                    kept.append(child)
                    continue
                notes.append(f"Stopped processes left running by an earlier, killed run (pid {child['pid']}).")
                _terminate_group(child["pid"], 10.0)
            records[:] = kept


def _terminate_group(pgid: int, timeout: float) -> None:
    members = [p for p in psutil.process_iter(["pid"]) if _pgid(p.pid) == pgid]
    for member in members:
        with contextlib.suppress(psutil.NoSuchProcess):
            member.terminate()
    _, alive = psutil.wait_procs(members, timeout=timeout)
    for member in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            member.kill()


def _pgid(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except (ProcessLookupError, PermissionError):
        return None
