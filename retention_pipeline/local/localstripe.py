"""A private localstripe (a local, stateful Stripe-compatible server) for the demo and the tests.

localstripe's own CLI binds every interface (``::``) and pickles its whole state to the shared file
``/tmp/localstripe.pickle`` after every write, which (a) leaks state between runs and users of the
machine and (b) makes each write cost a pickle of everything stored so far. ``LocalStripe`` instead
runs a tiny launcher (``python -m retention_pipeline.local.localstripe``) that imports
localstripe's aiohttp app, turns persistence off (state lives in memory only, always from scratch),
binds 127.0.0.1 on a free port (or a given one) and reports the port on stdout.

Optionally (`state_file=`), state survives restarts through a private pickle: loaded at start, written
once at a graceful stop (SIGTERM, which is also what the child gets when its parent dies), never per
request. A SIGKILLed server loses what changed since it started; callers that need data should check
and re-seed.

The child runs in its own session and gets SIGTERM when its parent dies (Linux ``PR_SET_PDEATHSIG``),
so a killed test run or demo never leaves it behind.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

_PR_SET_PDEATHSIG = 1
_READY_PREFIX = "LOCALSTRIPE_PORT="
# localstripe accepts any secret-key-shaped value; the demo and the tests use this one.
LOCALSTRIPE_API_KEY = "sk_test_localstripe"


class LocalStripeError(RuntimeError):
    """localstripe did not start or answer; the message carries the tail of its log."""


def _die_with_parent() -> None:
    # Linux only: the child gets SIGTERM if the process that started it dies, even by SIGKILL.
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


class LocalStripe:
    """Start localstripe on 127.0.0.1 (free port), wait until it answers, stop it on exit.

    >>> with LocalStripe() as server:
    ...     client = stripe.StripeClient(LOCALSTRIPE_API_KEY, base_addresses={"api": server.api_base})
    """

    def __init__(self, port: int = 0, state_file: Path | str | None = None, startup_timeout: float = 30.0):
        self.requested_port = port
        self.state_file = Path(state_file).resolve() if state_file is not None else None
        self.startup_timeout = startup_timeout
        self.process: subprocess.Popen | None = None
        self.port: int | None = None
        self._workdir: Path | None = None
        self._log_path: Path | None = None

    @property
    def api_base(self) -> str:
        if self.port is None:
            raise LocalStripeError("localstripe is not running")
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> LocalStripe:
        self.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop()

    def start(self) -> None:
        if self.process is not None:
            return
        # A private working directory: localstripe has nothing to write once persistence is off, but
        # its log and any stray file land here, never in a shared /tmp path.
        self._workdir = Path(tempfile.mkdtemp(prefix="localstripe-"))
        self._log_path = self._workdir / "localstripe.log"
        env = {**os.environ, "TMPDIR": str(self._workdir), "PYTHONUNBUFFERED": "1"}
        with open(self._log_path, "wb") as log:
            self.process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "retention_pipeline.local.localstripe",
                    "--port",
                    str(self.requested_port),
                    *(["--state-file", str(self.state_file)] if self.state_file else []),
                ],
                stdout=subprocess.PIPE,
                stderr=log,
                stdin=subprocess.DEVNULL,
                cwd=self._workdir,
                env=env,
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )
        try:
            self.port = self._read_port()
            self._wait_until_answering()
        except BaseException:
            self.stop()
            raise

    def _read_port(self) -> int:
        assert self.process is not None and self.process.stdout is not None
        deadline = time.monotonic() + self.startup_timeout
        buffer = b""
        while time.monotonic() < deadline:
            ready, _, _ = select.select([self.process.stdout], [], [], 0.2)
            if ready:
                chunk = os.read(self.process.stdout.fileno(), 4096)
                if not chunk:
                    break  # the child closed stdout: it exited
                buffer += chunk
                for line in buffer.decode(errors="replace").splitlines():
                    if line.startswith(_READY_PREFIX):
                        return int(line[len(_READY_PREFIX) :])
            elif self.process.poll() is not None:
                break
        raise LocalStripeError(f"localstripe did not start within {self.startup_timeout:.0f} s.{self._log_tail()}")

    def _wait_until_answering(self) -> None:
        deadline = time.monotonic() + self.startup_timeout
        while True:
            try:
                response = requests.get(
                    f"{self.api_base}/v1/customers",
                    params={"limit": 1},
                    headers={"Authorization": f"Bearer {LOCALSTRIPE_API_KEY}"},
                    timeout=2,
                )
                if response.status_code == 200:
                    return
            except requests.RequestException:
                pass
            if self.process is not None and self.process.poll() is not None:
                raise LocalStripeError(f"localstripe exited with code {self.process.returncode}.{self._log_tail()}")
            if time.monotonic() > deadline:
                raise LocalStripeError(f"localstripe did not answer within {self.startup_timeout:.0f} s.{self._log_tail()}")
            time.sleep(0.05)

    def reset(self) -> None:
        """Forget every object (customers, plans, subscriptions, ...): `DELETE /_config/data`."""
        response = requests.delete(f"{self.api_base}/_config/data", timeout=10)
        response.raise_for_status()

    def stop(self, timeout: float = 10.0) -> None:
        process, self.process = self.process, None
        if process is not None:
            if process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGTERM)
                try:
                    process.wait(timeout)
                except subprocess.TimeoutExpired:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(process.pid, signal.SIGKILL)
                    process.wait(timeout)
            if process.stdout is not None:
                process.stdout.close()
        self.port = None
        if self._workdir is not None:
            shutil.rmtree(self._workdir, ignore_errors=True)
            self._workdir = None

    def _log_tail(self) -> str:
        try:
            tail = self._log_path.read_text(errors="replace")[-2000:] if self._log_path else ""
        except OSError:
            tail = ""
        return f"\nlocalstripe log:\n{tail}" if tail.strip() else ""


def _serve() -> None:
    """The child: localstripe's app, in memory (optionally loaded from / saved to a private file), on 127.0.0.1."""
    import argparse
    import pickle
    import socket

    from aiohttp import web
    from localstripe import resources, server

    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--state-file", type=Path, default=None)
    args = parser.parse_args()

    # Never read or write the shared /tmp/localstripe.pickle, and never pickle per request.
    resources.Store.dump_to_disk = lambda self: None
    resources.Store.try_load_from_disk = lambda self: None
    resources.store.clear()
    state_file: Path | None = args.state_file
    if state_file is not None and state_file.exists():
        with open(state_file, "rb") as f:
            dict.update(resources.store, pickle.load(f))

    async def save_state(app) -> None:
        if state_file is not None:
            state_file.parent.mkdir(parents=True, exist_ok=True)
            partial = state_file.with_name(state_file.name + ".partial")
            with open(partial, "wb") as f:
                pickle.dump(dict(resources.store), f, protocol=pickle.HIGHEST_PROTOCOL)
            os.replace(partial, state_file)

    server.app.on_cleanup.append(save_state)

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", args.port))
    port = sock.getsockname()[1]

    async def announce(app) -> None:
        print(f"{_READY_PREFIX}{port}", flush=True)

    server.app.on_startup.append(announce)
    # aiohttp turns SIGTERM/SIGINT into a graceful shutdown.
    web.run_app(server.app, sock=sock, access_log=None, print=None)


if __name__ == "__main__":
    _serve()
