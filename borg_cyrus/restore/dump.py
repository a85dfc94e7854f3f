"""The dump directory an archive brings back: manifest, mailbox list, the
dumps' files. Read by every restore and by verify. Its contents are
untrusted (docs/security.md): every mailbox entry is checked, and raw files
of another Cyrus series are refused unless forced."""

import json
import logging
import os
from dataclasses import dataclass

from borg_cyrus.cyrus import mboxlist
from borg_cyrus.errors import BorgCyrusError
from borg_cyrus.safety import safeio, trust

log = logging.getLogger(__name__)


class Dump:
    """A dump directory as written by `before` (and extracted from an archive).
    Its contents are untrusted: every mailbox entry is checked (trust.py)."""

    replace = False  # newer than the databases in place: restore_dump replaces them

    def __init__(self, path, where=None):
        self.path = path
        mpath = os.path.join(path, "manifest.json")
        try:
            self.manifest = json.loads(safeio.read_bytes(mpath, limit=1 << 30))
        except FileNotFoundError:
            raise BorgCyrusError(
                f"{mpath} is missing; extract the dump directory from the archive or pass --dump-dir"
            ) from None
        except safeio.NotRegularFile as e:
            raise BorgCyrusError(f"{e}; the dump is damaged") from None
        except ValueError as e:
            raise BorgCyrusError(f"{mpath} is not valid JSON ({e}); the dump is damaged") from None
        if not isinstance(self.manifest, dict):
            raise BorgCyrusError(f"{mpath} is not a borg-cyrus manifest; the dump is damaged")
        self.mailboxes = mboxlist.load_dump(os.path.join(path, "mailboxes.json"))
        trust.check_mailboxes(self.mailboxes, f"{where or path}: mailboxes.json")
        expected = self.manifest.get("counts", {}).get("mailboxes")
        if expected is not None and expected != len(self.mailboxes):
            raise BorgCyrusError(
                f"{path}/mailboxes.json lists {len(self.mailboxes)} mailboxes, "
                f"the manifest says {expected}; the dump is damaged"
            )

    def file(self, name):
        p = os.path.join(self.path, name)
        return p if os.path.exists(p) else None

    @property
    def records(self):
        """The manifest's `dumps` entries (dicts: name, files, plugin, ...)."""
        return [r for r in self.manifest.get("dumps") or [] if isinstance(r, dict)]

    def record(self, name):
        return next((r for r in self.records if r.get("name") == name), None)

    def batch(self, dbname):
        for d in self.manifest.get("dumps", []):
            if d.get("name") == f"{os.path.basename(dbname)}.batch":
                return self.file(d["name"])
        return self.file(f"{os.path.basename(dbname)}.batch")


def live_cyrus_version(ctx):
    if not ctx.tools.has("cyr_info"):
        return None
    r = ctx.cyrus("cyr_info", "version", changes=False, check=False)
    return r.text.strip() or None if r.returncode == 0 else None


def check_cyrus_version(ctx, dump, force, where):
    """The archive's Cyrus series against this server's. Same series: None.
    A newer series here: an Upgrade (the restore then runs what Cyrus's
    upgrade notes ask). An older series here: refused, --force or not (its
    files are of formats the older Cyrus cannot read). Unknown versions, or
    a manifest that does not agree with the dump's cyrus-version.txt:
    refused unless force."""
    claimed = dump.manifest.get("cyrus_version")
    recorded = None
    vfile = dump.file("cyrus-version.txt")
    if vfile:
        try:
            recorded = safeio.read_bytes(vfile, limit=4096).decode("utf-8", "replace").strip()
        except (OSError, BorgCyrusError):
            recorded = None
    if claimed and recorded and trust.cyrus_series(str(claimed)) != trust.cyrus_series(recorded):
        msg = (
            f"{where}: the manifest says {claimed} but cyrus-version.txt says {recorded}; the archive may have "
            "been tampered with"
        )
        if not force:
            raise BorgCyrusError(msg + ". Add --force to restore it anyway")
        log.warning("%s; restoring it anyway (--force)", msg)
    archived_text = recorded or (claimed if isinstance(claimed, str) else None)
    archived = trust.cyrus_series(archived_text)
    live_text = live_cyrus_version(ctx)
    live = trust.cyrus_series(live_text)
    if archived is not None and archived == live:
        return None
    if archived is not None and live is not None:
        if archived > live:
            raise BorgCyrusError(
                f"{where} was made by Cyrus {archived[0]}.{archived[1]} ({archived_text}), this server runs the "
                f"older {live[0]}.{live[1]} ({live_text}): Cyrus cannot read newer formats; restore it onto "
                f"Cyrus {archived[0]}.{archived[1]} or later"
            )
        return Upgrade(archived, live, archived_text, live_text)
    if archived is None:
        why = "does not say which Cyrus version made it"
    else:
        why = f"was made by Cyrus {archived[0]}.{archived[1]} and this server's version cannot be read (cyr_info)"
    if force:
        log.warning("%s %s; restoring its raw mailbox files anyway (--force)", where, why)
        return None
    raise BorgCyrusError(
        f"{where} {why}: its raw mailbox and database files are not restored onto a Cyrus of unknown "
        "version. Add --force to restore them anyway"
    )


@dataclass(frozen=True)
class Upgrade:
    """An archive of an older Cyrus series restored onto a newer one."""

    archived: tuple
    live: tuple
    archived_text: str
    live_text: str

    def __str__(self):
        a, b = self.archived, self.live
        return f"Cyrus {a[0]}.{a[1]} ({self.archived_text}) -> {b[0]}.{b[1]} ({self.live_text})"
