"""The dump directory an archive brings back: manifest, mailbox list, the
dumps' files. Read by every restore and by verify. Its contents are
untrusted (docs/security.md): every mailbox entry is checked, and raw files
of another Cyrus series are refused unless forced."""

import json
import logging
import os

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
    """Refuse raw files of another Cyrus series (3.6 vs 3.10) unless force;
    a manifest that does not agree with the dump's cyrus-version.txt is named."""
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
    archived = trust.cyrus_series(recorded or (claimed if isinstance(claimed, str) else None))
    live_text = live_cyrus_version(ctx)
    live = trust.cyrus_series(live_text)
    if archived is not None and archived == live:
        return
    if archived is None:
        why = "does not say which Cyrus version made it"
    elif live is None:
        why = f"was made by Cyrus {archived[0]}.{archived[1]} and this server's version cannot be read (cyr_info)"
    else:
        why = (
            f"was made by Cyrus {archived[0]}.{archived[1]} ({recorded or claimed}), this server runs "
            f"{live[0]}.{live[1]} ({live_text})"
        )
    if force:
        log.warning("%s %s; restoring its raw mailbox files anyway (--force)", where, why)
        return
    raise BorgCyrusError(
        f"{where} {why}: its raw mailbox and database files are not restored onto another Cyrus "
        "version (formats change between releases; read Cyrus's upgrade notes). Add --force to "
        "restore them anyway"
    )
