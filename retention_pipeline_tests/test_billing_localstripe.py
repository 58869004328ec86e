"""LocalStripe: loopback only, no shared state file, fresh state per start, reset, and no orphans."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import stripe

from retention_pipeline.local.localstripe import LOCALSTRIPE_API_KEY, LocalStripe

_SHARED_PICKLE = Path("/tmp/localstripe.pickle")


def _client(server: LocalStripe) -> stripe.StripeClient:
    return stripe.StripeClient(LOCALSTRIPE_API_KEY, base_addresses={"api": server.api_base}, max_network_retries=0)


def _stat(path: Path):
    try:
        stat = path.stat()
        return stat.st_mtime_ns, stat.st_size
    except FileNotFoundError:
        return None


def test_loopback_only_in_memory_and_reset():
    pickle_before = _stat(_SHARED_PICKLE)
    with LocalStripe() as server:
        assert server.api_base.startswith("http://127.0.0.1:")
        listening = [c for c in psutil.Process(server.process.pid).net_connections(kind="inet") if c.status == psutil.CONN_LISTEN]
        assert [(c.laddr.ip, c.laddr.port) for c in listening] == [("127.0.0.1", server.port)]
        client = _client(server)
        client.v1.customers.create(params={"email": "a@example.com"})
        assert len(client.v1.customers.list().data) == 1
        server.reset()
        assert client.v1.customers.list().data == []
        client.v1.customers.create(params={"email": "b@example.com"})
        pid = server.process.pid
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    # Nothing was written to localstripe's shared pickle, and a new server starts empty.
    assert _stat(_SHARED_PICKLE) == pickle_before
    with LocalStripe() as server:
        assert _client(server).v1.customers.list().data == []


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux-only")
def test_server_dies_with_its_parent():
    parent = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import time\nfrom retention_pipeline.local.localstripe import LocalStripe\n"
            "s = LocalStripe(); s.start(); print(s.process.pid, flush=True); time.sleep(120)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        child_pid = int(parent.stdout.readline())
        assert psutil.pid_exists(child_pid)
        os.kill(parent.pid, signal.SIGKILL)  # no cleanup code runs in the parent
        parent.wait(10)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if not psutil.pid_exists(child_pid) or psutil.Process(child_pid).status() == psutil.STATUS_ZOMBIE:
                break
            time.sleep(0.05)
        else:
            os.killpg(child_pid, signal.SIGKILL)
            pytest.fail("localstripe outlived its parent")
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()


def test_state_file_keeps_objects_across_a_graceful_restart(tmp_path):
    state = tmp_path / "localstripe" / "state.pickle"
    with LocalStripe(state_file=state) as server:
        customer = _client(server).v1.customers.create(params={"email": "kept@example.com", "metadata": {"user_id": "7"}})
    assert state.exists()
    with LocalStripe(state_file=state) as server:
        kept = _client(server).v1.customers.retrieve(customer.id)
        assert kept.email == "kept@example.com" and kept.metadata["user_id"] == "7"
