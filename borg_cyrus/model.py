"""The data that flows between plugins: locations, excludes, dumps, the mailbox list, the view."""

import os
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Location:
    """Something to back up.

    kind: "data" lives on Cyrus's volumes and is read through the frozen view;
    "config" (files in /etc) and "dump" (our own output) are read as they are.
    """

    path: str
    kind: str
    what: str
    required: bool = True


@dataclass(frozen=True)
class Exclude:
    """Leave path out of the archive; with regex, only entries below path whose
    relative path matches it (anchored). mailbox: the internal name of the
    mailbox whose messages this leaves out (listed in the manifest, emptied by
    a full restore)."""

    path: str
    regex: str | None = None
    reason: str = ""
    mailbox: str | None = None


@dataclass
class DumpRecord:
    """One dump written into the dump directory. extra goes into its entry of
    the manifest's `dumps` list; manifest holds top-level manifest sections
    the dump contributes (e.g. {"cyrus_version": ...}), merged by
    backup.manifest.build."""

    name: str
    files: list
    records: int | None = None
    bytes: int = 0
    seconds: float = 0.0
    plugin: str = ""
    extra: dict = field(default_factory=dict)
    manifest: dict = field(default_factory=dict)

    def to_json(self):
        out = {
            "name": self.name,
            "files": self.files,
            "records": self.records,
            "bytes": self.bytes,
            "seconds": round(self.seconds, 3),
            "plugin": self.plugin,
        }
        out.update(self.extra)
        return out


@dataclass
class MailboxList:
    """The dumped mailbox list: its record and the parsed mailboxes, passed on
    to every other dumper, the consistency check and the excludes."""

    record: DumpRecord
    mailboxes: list


@dataclass
class View:
    """How the backup reads the data locations.

    prefixes maps a data location to the directory its frozen copy is mounted
    under, so that prefix + path is where borg reads it ('' = read live).
    imapd_conf is what dumpers pass to Cyrus tools (a rewritten copy that points
    into the snapshot, for point-in-time dumps); layout is the matching layout.
    """

    imapd_conf: str
    layout: object
    prefixes: dict = field(default_factory=dict)
    blocked_seconds: float | None = None
    description: str = "live"

    def prefix_for(self, path):
        best = ""
        best_len = -1
        for loc, prefix in self.prefixes.items():
            if (path == loc or path.startswith(loc.rstrip("/") + "/")) and len(loc) > best_len:
                best, best_len = prefix, len(loc)
        return best

    def read_path(self, path):
        """Where the original path can be read right now."""
        prefix = self.prefix_for(path)
        return prefix.rstrip("/") + path if prefix else path

    def root_pattern(self, path):
        """A borg root: slashdot form keeps the original path in the archive."""
        prefix = self.prefix_for(path)
        return f"{prefix.rstrip('/')}/.{path}" if prefix else path


def nest_free(paths):
    """Drop paths that lie inside another path of the list; keep order. O(paths x depth)."""
    norm = [os.path.normpath(p) for p in paths]
    given, seen, out = set(norm), set(), []
    for p in norm:
        if p in seen:
            continue
        seen.add(p)
        if p != "/" and p.startswith("/") and "/" in given:
            continue
        d, parent = p, os.path.dirname(p)
        while parent != d and parent not in given:  # up to the root: is an ancestor in the list?
            d, parent = parent, os.path.dirname(parent)
        if parent != d:
            continue
        out.append(p)
    return out
