"""borg-cyrus: consistent, restorable Borg/borgmatic backups of a Cyrus IMAP server."""

__version__ = "0.1.0"
