"""The `retention-pipeline` console script: settings are read when modules are imported, so a bad
environment variable is reported here as one line that says what to fix, not as a traceback."""

import sys

from retention_pipeline.errors import SettingsError


def main() -> None:
    try:
        from retention_pipeline.cli import main as cli
    except SettingsError as exc:
        sys.stderr.write(f"error: {exc}\n")
        sys.exit(2)
    cli()
