"""Exceptions that end a command with one clear line and a non-zero exit."""


class BorgCyrusError(Exception):
    """A failure the user can act on. str(exc) is the one line shown."""

    exit_code = 1


class ConfigError(BorgCyrusError):
    """Bad input: config file, imapd.conf, command line."""

    exit_code = 2


class CommandError(BorgCyrusError):
    """An external command failed or timed out."""

    def __init__(self, message, argv=None, returncode=None, stderr=""):
        super().__init__(message)
        self.argv = argv
        self.returncode = returncode
        self.stderr = stderr


class BusyError(BorgCyrusError):
    """Another run holds the lock or has a backup in progress (an error:
    borgmatic reports it, so a stuck run cannot skip every night silently)."""


class SkipError(BusyError):
    """Busy, and the config asks to skip: exit 75, borgmatic's soft failure."""

    exit_code = 75


class DeadlineError(BorgCyrusError):
    """`before` or `after` ran past run_timeout."""
