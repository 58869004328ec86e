"""Errors a person can act on, importable without side effects (settings raise at import)."""


class SettingsError(ValueError):
    """A project setting from the environment is unusable; the message says which and how to fix it."""
