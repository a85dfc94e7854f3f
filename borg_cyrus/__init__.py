"""borg-cyrus: consistent, restorable Borg/borgmatic backups of a Cyrus IMAP server.

The public plugin API (docs/architecture.md): implement hooks of
borg_cyrus.hookspecs with `@hookimpl`, return these types.
"""

__version__ = "0.1.0"

from borg_cyrus.context import Context  # noqa: E402
from borg_cyrus.hookspecs import hookimpl  # noqa: E402
from borg_cyrus.model import DumpRecord, Exclude, Location, MailboxList, View  # noqa: E402
from borg_cyrus.providers.base import Mode  # noqa: E402
from borg_cyrus.providers.snapshot import SnapshotMode  # noqa: E402

__all__ = [
    "Context",
    "DumpRecord",
    "Exclude",
    "Location",
    "MailboxList",
    "Mode",
    "SnapshotMode",
    "View",
    "__version__",
    "hookimpl",
]
