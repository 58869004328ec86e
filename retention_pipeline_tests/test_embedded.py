"""The embedded PostgreSQL: one owner starts and stops it, guests attach, a killed owner's server is recovered."""

import shutil
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import psutil
import pytest

from retention_pipeline.local.embedded import EmbeddedPostgres
from retention_pipeline.settings import STATE_DIR


def postgres_processes(pgdata: Path) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["name", "cmdline", "status"]):
        if proc.info["name"] == "postgres" and proc.info["status"] != psutil.STATUS_ZOMBIE:
            if str(pgdata) in " ".join(proc.info["cmdline"] or []):
                found.append(proc)
    return found


@pytest.fixture
def pgdata():
    path = STATE_DIR / f"test-embedded-{uuid.uuid4().hex[:8]}"
    yield path
    shutil.rmtree(path, ignore_errors=True)
    for suffix in (".owner.lock", ".guests.lock", ".guests.json"):
        path.with_name(path.name + suffix).unlink(missing_ok=True)


def test_owner_starts_and_stops_the_server(pgdata):
    server = EmbeddedPostgres(pgdata)
    status = server.start()
    assert status.owner and status.adopted_stale_pid is None
    assert server.ensure_database("app") is True and server.ensure_database("app") is False
    with server.connect("app") as conn, conn.cursor() as cur:
        cur.execute("SHOW listen_addresses")
        assert cur.fetchone()[0] == "", "the embedded server must listen on no TCP port"
    assert postgres_processes(pgdata)
    server.stop()
    assert not postgres_processes(pgdata)


def test_a_guest_attaches_without_stopping_the_owners_server(pgdata):
    owner = EmbeddedPostgres(pgdata)
    owner.start()
    guest = EmbeddedPostgres(pgdata)
    assert guest.start().owner is False
    guest.stop()
    with owner.connect() as conn, conn.cursor() as cur:
        cur.execute("SELECT 1")
    owner.stop()
    assert not postgres_processes(pgdata)


def test_a_server_orphaned_by_a_killed_owner_is_adopted_and_stopped(pgdata):
    script = textwrap.dedent(f"""
        import time
        from pathlib import Path
        from retention_pipeline.local.embedded import EmbeddedPostgres
        EmbeddedPostgres(Path({str(pgdata)!r})).start()
        print("started", flush=True)
        time.sleep(120)
    """)
    owner = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert owner.stdout.readline().strip() == "started"
    orphan_pids = {p.pid for p in postgres_processes(pgdata)}
    owner.send_signal(signal.SIGKILL)
    owner.wait()
    time.sleep(0.5)
    assert postgres_processes(pgdata), "a SIGKILLed owner leaves its server running"

    server = EmbeddedPostgres(pgdata)
    status = server.start()
    assert status.owner and status.adopted_stale_pid in orphan_pids
    server.stop()
    assert not postgres_processes(pgdata)


def test_an_owner_leaving_hands_the_server_to_a_live_guest_and_the_last_one_out_stops_it(pgdata):
    """`dev` started while `demo` runs is a guest: `demo` ending must not stop the server under it."""
    script = textwrap.dedent(f"""
        import sys
        from pathlib import Path
        from retention_pipeline.local.embedded import EmbeddedPostgres
        guest = EmbeddedPostgres(Path({str(pgdata)!r}))
        print("owner" if guest.start().owner else "guest", flush=True)
        sys.stdin.readline()
        with guest.connect() as conn, conn.cursor() as cur:
            cur.execute("SELECT 1")
        guest.stop()
        print("stopped", flush=True)
    """)
    owner = EmbeddedPostgres(pgdata)
    owner.start()
    guest = subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert guest.stdout.readline().strip() == "guest"
        owner.stop()
        assert postgres_processes(pgdata), "the owner stopped the server a guest still uses"
        guest.stdin.write("go\n")
        guest.stdin.flush()
        assert guest.stdout.readline().strip() == "stopped"
        assert guest.wait(timeout=60) == 0
        assert not postgres_processes(pgdata), "the last process out left the server running"
    finally:
        if guest.poll() is None:
            guest.kill()
