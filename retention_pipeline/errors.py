"""Errors a person can act on, importable without side effects (settings raise at import)."""


class SettingsError(ValueError):
    """A project setting from the environment is unusable; the message says which and how to fix it."""


class LauncherError(RuntimeError):
    """The local harness cannot set up its databases or processes; the message says what the user should do."""


class EmbeddedServerError(RuntimeError):
    """The embedded server could not be started or reached; the message says what to do."""
