"""Support for the end-to-end UI test: the demo + `dagster dev` as real subprocesses, a GraphQL client,
headless Chromium, and a check that stopping the UI leaves no process of ours behind."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from retention_pipeline.settings import PROJECT_ROOT

ARTIFACTS = PROJECT_ROOT / "test-artifacts" / "ui"

# Debian's chromium on this machine type; Playwright's own browser download does not work here.
CHROMIUM_CANDIDATES = ("/usr/bin/chromium", "chromium", "chromium-browser")

# Headless, no sandbox (CI runs as root), and nothing that phones home: the network is closed.
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

# Variables that would point the subprocesses at something other than their private, embedded state.
_FOREIGN_ENV = (
    "RETENTION_DATABASE_URL",
    "DAGSTER_PG_URL",
    "DAGSTER_HOME",
    "STRIPE_API_KEY",
    "STRIPE_API_BASE",
    "RESEND_API_KEY",
    "RESEND_API_URL",
    "RETENTION_NOW",
    "RETENTION_UNSUBSCRIBE_SECRET",
)


def find_chromium() -> str | None:
    """RETENTION_CHROMIUM if set (only that), else Debian's /usr/bin/chromium or a chromium on PATH."""
    explicit = os.environ.get("RETENTION_CHROMIUM")
    for candidate in (explicit,) if explicit else CHROMIUM_CANDIDATES:
        path = candidate if os.path.isabs(candidate) else shutil.which(candidate)
        if path and os.access(path, os.X_OK):
            return path
    return None


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def cli_command(*args: str) -> list[str]:
    """`retention-pipeline ARGS` from this environment's console script (the module as a fallback)."""
    script = Path(sys.executable).parent / "retention-pipeline"
    if script.exists():
        return [str(script), *args]
    return [sys.executable, "-m", "retention_pipeline.cli", *args]


class GraphQLError(AssertionError):
    pass


class GraphQL:
    def __init__(self, url: str):
        self.url = url

    def __call__(self, query: str, variables: dict | None = None, timeout: float = 60.0) -> dict:
        body = json.dumps({"query": query, "variables": variables or {}}).encode()
        request = urllib.request.Request(self.url, data=body, headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=timeout) as response:
            payload = json.load(response)
        if payload.get("errors"):
            raise GraphQLError(f"GraphQL errors: {json.dumps(payload['errors'], indent=1)[:2000]}")
        return payload["data"]


def _same_process(process: psutil.Process) -> bool:
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@dataclass
class DagsterUI:
    """`retention-pipeline demo` then `retention-pipeline dev` on a private state dir and a free port."""

    state_dir: Path
    port: int
    log_dir: Path
    env: dict = field(default_factory=dict)
    process: subprocess.Popen | None = None
    demo_output: str = ""
    timings: dict = field(default_factory=dict)
    _seen: list = field(default_factory=list)  # psutil.Process objects that belonged to us

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def graphql(self) -> GraphQL:
        return GraphQL(f"{self.base_url}/graphql")

    def __post_init__(self):
        self.env = {k: v for k, v in os.environ.items() if k not in _FOREIGN_ENV}
        self.env["RETENTION_STATE_DIR"] = str(self.state_dir)
        self.log_dir.mkdir(parents=True, exist_ok=True)

    # -- demo ---------------------------------------------------------------------------------
    def run_demo(self, users: int = 400, timeout: float = 300.0) -> str:
        started = time.monotonic()
        log = self.log_dir / "demo.log"
        with open(log, "w") as stderr:
            result = subprocess.run(
                cli_command("demo", "--users", str(users)),
                cwd=PROJECT_ROOT,
                env=self.env,
                stdout=subprocess.PIPE,
                stderr=stderr,
                text=True,
                timeout=timeout,
                start_new_session=True,
            )
        self.timings["demo"] = time.monotonic() - started
        self.demo_output = result.stdout
        assert result.returncode == 0, f"demo failed ({result.returncode}); see {log}:\n{log.read_text()[-3000:]}"
        leftovers = self.our_processes()
        assert not leftovers, f"the demo left processes running: {self.describe(leftovers)}"
        return result.stdout

    # -- dev ----------------------------------------------------------------------------------
    def start(self, timeout: float = 150.0) -> None:
        started = time.monotonic()
        self._dev_log = open(self.log_dir / "dev.log", "w")
        self.process = subprocess.Popen(
            cli_command("dev", "--port", str(self.port)),
            cwd=PROJECT_ROOT,
            env=self.env,
            stdout=self._dev_log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                code = self.process.returncode
                raise AssertionError(f"`retention-pipeline dev` exited with {code}:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(f"{self.base_url}/server_info", timeout=5) as response:
                    info = json.load(response)
                if info.get("dagster_webserver_version"):
                    break
            except (urllib.error.URLError, ConnectionError, TimeoutError, json.JSONDecodeError):
                pass
            time.sleep(1.0)
        else:
            raise AssertionError(f"the Dagster webserver did not answer within {timeout:.0f} s:\n{self.log_tail()}")
        self.timings["dev_start"] = time.monotonic() - started
        self._remember_processes()
        # The first visit of a fresh instance opens a "join the community" dialog over every page.
        self.graphql("mutation { setNuxSeen }")

    def log_tail(self, chars: int = 4000) -> str:
        path = self.log_dir / "dev.log"
        return path.read_text(errors="replace")[-chars:] if path.exists() else ""

    def stop(self, timeout: float = 90.0) -> None:
        """SIGTERM, as a terminal's Ctrl-C or a service manager would; everything must go with it."""
        if self.process is None:
            return
        started = time.monotonic()
        self._remember_processes()
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
                raise AssertionError(
                    f"`retention-pipeline dev` ignored SIGTERM for {timeout:.0f} s:\n{self.log_tail()}"
                ) from None
        self.timings["dev_stop"] = time.monotonic() - started
        self._dev_log.close()
        self.process = None

    def wait_until_gone(self, timeout: float = 30.0) -> list[psutil.Process]:
        deadline = time.monotonic() + timeout
        while True:
            leftovers = self.our_processes()
            if not leftovers or time.monotonic() > deadline:
                return leftovers
            time.sleep(0.5)

    def kill_leftovers(self) -> None:
        for process in self.our_processes():
            try:
                process.kill()
            except psutil.Error:
                pass

    # -- our processes ------------------------------------------------------------------------
    def _remember_processes(self) -> None:
        """Record the launcher's whole tree and the embedded server's, so a survivor is recognised even if
        its command line does not name the state dir (PostgreSQL backends, dagster's run workers)."""
        roots = [psutil.Process(self.process.pid)] if self.process and self.process.poll() is None else []
        roots += [p for p in self.our_processes() if p not in roots]
        for root in roots:
            try:
                tree = [root, *root.children(recursive=True)]
            except psutil.NoSuchProcess:
                continue
            self._seen += [p for p in tree if p not in self._seen]

    def our_processes(self) -> list[psutil.Process]:
        """Alive processes of this test: remembered ones, any postgres whose command line names our state
        dir, and any dagster process whose environment carries our RETENTION_STATE_DIR."""
        state = str(self.state_dir)
        found = [p for p in self._seen if _same_process(p)]
        for process in psutil.process_iter(["pid", "cmdline"]):
            if process in found or process.pid == os.getpid():
                continue
            cmdline = " ".join(process.info["cmdline"] or [])
            ours = "postgres" in cmdline and state in cmdline
            if not ours and "dagster" in cmdline:
                try:
                    ours = process.environ().get("RETENTION_STATE_DIR") == state
                except psutil.Error:
                    ours = False
            if ours and _same_process(process):
                found.append(process)
        return found

    @staticmethod
    def describe(processes: list[psutil.Process]) -> str:
        lines = []
        for process in processes:
            try:
                lines.append(f"pid {process.pid}: {' '.join(process.cmdline())[:200]}")
            except psutil.Error:
                lines.append(f"pid {process.pid}: (gone)")
        return "\n".join(lines)
