"""Full-server restore: after `borg extract` of an archive, make Cyrus whole.

The archive holds the spools, configdirectory and the dump directory at their
original paths. This brings back mailboxes.db and annotations.db from the
binary-safe dumps when they are missing or damaged (falling back to
`ctl_mboxlist -u` of the JSON dump), re-registers mailboxes created after
the dump (`reconstruct -P`), recovers the databases (`ctl_cyrusdb -r`),
empties the folders whose messages were excluded on purpose (`reconstruct`),
recomputes quota usage (`quota -f`) and fixes ownership.
"""

import contextlib
import json
import logging
import os
import stat
import tempfile
import time

from borg_cyrus.cyrus import dbbatch, mboxlist
from borg_cyrus.safety import safeio, trust
from borg_cyrus.errors import BorgCyrusError
from borg_cyrus.cyrus.service import Service

log = logging.getLogger(__name__)


class Dump:
    """A dump directory as written by `before` (and extracted from an archive).
    Its contents are untrusted: every mailbox entry is checked (trust.py)."""

    def __init__(self, path, where=None):
        self.path = path
        mpath = os.path.join(path, "manifest.json")
        try:
            self.manifest = json.loads(safeio.read_bytes(mpath, limit=1 << 30))
        except FileNotFoundError:
            raise BorgCyrusError(f"{mpath} is missing; extract the dump directory from the archive "
                                 "or pass --dump-dir") from None
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
            raise BorgCyrusError(f"{path}/mailboxes.json lists {len(self.mailboxes)} mailboxes, "
                                 f"the manifest says {expected}; the dump is damaged")

    def file(self, name):
        p = os.path.join(self.path, name)
        return p if os.path.exists(p) else None

    def batch(self, dbname):
        for d in self.manifest.get("dumps", []):
            if d.get("name") == f"{os.path.basename(dbname)}.batch":
                return self.file(d["name"])
        return self.file(f"{os.path.basename(dbname)}.batch")


def _int(value, default):
    try:
        return int(value)
    except (TypeError, ValueError):
        return default


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
        msg = (f"{where}: the manifest says {claimed} but cyrus-version.txt says {recorded}; the archive may have "
               "been tampered with")
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
        why = (f"was made by Cyrus {archived[0]}.{archived[1]} ({recorded or claimed}), this server runs "
               f"{live[0]}.{live[1]} ({live_text})")
    if force:
        log.warning("%s %s; restoring its raw mailbox files anyway (--force)", where, why)
        return
    raise BorgCyrusError(f"{where} {why}: its raw mailbox and database files are not restored onto another Cyrus "
                         "version (formats change between releases; read Cyrus's upgrade notes). Add --force to "
                         "restore them anyway")


class FullRestore:
    def __init__(self, ctx, dump_dir=None, force=False):
        self.ctx = ctx
        self.lay = ctx.layout
        self.dump = Dump(dump_dir or ctx.dump_dir)
        self.force = force
        self.uid, self.gid = ctx.cyrus_ids()
        self.report = []

    def note(self, msg, *args):
        text = msg % args if args else msg
        log.info("%s", text)
        self.report.append(text)

    # -- steps ---------------------------------------------------------------
    def check_stopped(self):
        svc = Service(self.ctx.config["service"], self.ctx.runner)
        if svc.is_running():
            raise BorgCyrusError(f"Cyrus is running ({svc.describe()}); stop it before a full restore")

    def roots(self):
        return [self.lay.configdirectory, self.lay.sievedir] + self.lay.all_partition_dirs()

    def fix_parents(self):
        """`borg extract` creates the parents of archived paths that are not in
        the archive (e.g. /var/spool/cyrus above the partitions) as root:root
        0700, which the cyrus user cannot enter. Give such a directory the
        owner and mode recorded at backup time (manifest `parents`), or 0755;
        a directory that does not look made by borg is left alone."""
        recorded = self.dump.manifest.get("parents") or {}
        done = set()
        for root in self.roots():
            parent = os.path.dirname(root)
            while parent not in ("", "/") and parent not in done:
                done.add(parent)
                try:
                    st = os.lstat(parent)
                except FileNotFoundError:
                    parent = os.path.dirname(parent)
                    continue
                if stat.S_ISDIR(st.st_mode) and (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (0, 0, 0o700):
                    self.restore_parent(parent, recorded.get(parent))
                parent = os.path.dirname(parent)

    def restore_parent(self, path, rec):
        """Only root's or the cyrus user's, never writable by others: the record
        comes from the archive."""
        uid, gid, mode = 0, 0, 0o755
        if isinstance(rec, dict):
            mode = _int(rec.get("mode"), 0o755) & 0o755
            uid = self.uid if rec.get("user") == self.ctx.config["cyrus_user"] else 0
            gid = self.gid if rec.get("group") == self.ctx.config["cyrus_group"] else 0
            if not mode & 0o111:
                return
        if self.ctx.dry_run:
            self.note("would give %s (made by borg extract, root 0700) owner %d:%d and mode %o", path, uid, gid, mode)
            return
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
        try:
            os.fchown(fd, uid, gid)
            os.fchmod(fd, mode)
        finally:
            os.close(fd)
        self.note("gave %s (made by borg extract, root 0700) owner %d:%d and mode %o%s", path, uid, gid, mode,
                  " as recorded at backup time" if rec else "")

    def check_reachable(self):
        """The cyrus user must be able to enter every parent of Cyrus's dirs."""
        for root in [self.lay.configdirectory] + self.lay.all_partition_dirs():
            blocked = safeio.blocking_parent(os.path.dirname(root), self.uid, self.gid)
            if blocked:
                parent, st = blocked
                raise BorgCyrusError(f"the {self.ctx.config['cyrus_user']} user cannot enter {parent} "
                                     f"(mode {st.st_mode & 0o777:o}); run chmod o+x {parent}")

    def ensure_dirs(self):
        lay = self.lay
        dirs = [(lay.configdirectory, 0o750), (os.path.join(lay.configdirectory, "db"), 0o700)]
        dirs += [(lay.runtime_paths[k], 0o700) for k in ("proc_path", "mboxname_lockpath")]
        dirs += [(lay.runtime_paths["socket_dir"], 0o750)]
        dirs += [(p, 0o750) for p in lay.all_partition_dirs()]
        dirs += [(lay.sievedir, 0o750)]
        for path, mode in dirs:
            if not os.path.isdir(path):
                self.mkdir(path, mode)

    def mkdir(self, path, mode):
        if self.ctx.dry_run:
            self.note("would create %s", path)
            return
        parent = os.path.dirname(path)
        if not os.path.isdir(parent):
            os.makedirs(parent, 0o755)
        os.mkdir(path, mode)
        os.lchown(path, self.uid, self.gid)
        self.note("created %s", path)

    def db_health(self, name, expected_names=None):
        """None if healthy, else why not."""
        backend, path = self.lay.database(name)
        if not os.path.exists(path):
            return "missing"
        r = self.ctx.cyrus("cyr_dbtool", path, backend, "batch", input=b"SHOW\n", changes=False, check=False)
        if r.returncode:
            return f"unreadable (cyr_dbtool exit {r.returncode})"
        try:
            records = dbbatch.parse(r.stdout)
        except dbbatch.BatchFormatError as e:
            return f"unreadable ({e})"
        if expected_names is not None:
            n = sum(1 for k, _ in records if k[:1] == b"N")
            if n < expected_names:
                return f"holds {n} mailboxes, the dump {expected_names}"
        elif not records and self._dump_records(name):
            return "empty, the dump is not"
        return None

    def _dump_records(self, name):
        path = self.dump.batch(self.lay.database(name)[1])
        if not path:
            return 0
        with open(path, "rb") as f:
            return len(dbbatch.parse(f.read()))

    def create_empty_db(self, name):
        backend, path = self.lay.database(name)
        if os.path.exists(path):
            aside = f"{path}.damaged-{time.strftime('%Y%m%d%H%M%S')}"
            if self.ctx.dry_run:
                self.note("would move %s to %s", path, aside)
            else:
                os.rename(path, aside)
                self.note("moved the damaged %s to %s", path, aside)
        empty = os.path.join(self.lay.configdirectory, ".borg-cyrus-empty-(dry-run)")
        if not self.ctx.dry_run:
            # a fresh name, O_EXCL: never through something planted in the configdirectory
            fd, empty = tempfile.mkstemp(prefix=".borg-cyrus-empty-", dir=self.lay.configdirectory)
            os.fchown(fd, self.uid, self.gid)
            os.close(fd)
        try:
            self.ctx.cyrus("cvt_cyrusdb", empty, "flat", path, backend)
        finally:
            if not self.ctx.dry_run:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(empty)

    def load_batch(self, name, batch_path):
        backend, path = self.lay.database(name)
        with open(batch_path, "rb") as f:
            records = dbbatch.parse(f.read())
        self.create_empty_db(name)
        self.ctx.cyrus("cyr_dbtool", path, backend, "batch", input=dbbatch.load_script(records))
        self.note("rebuilt %s from %s (%d records)", path, os.path.basename(batch_path), len(records))

    def restore_mailboxes_db(self):
        want = sum(1 for mb in self.dump.mailboxes)
        why = self.db_health("mailboxes", want)
        if why is None:
            self.note("mailboxes.db is healthy")
            return
        self.note("mailboxes.db is %s; rebuilding it from the dump", why)
        batch = self.dump.batch(self.lay.database("mailboxes")[1])
        if batch:
            try:
                self.load_batch("mailboxes", batch)
            except BorgCyrusError as e:
                log.warning("loading the binary dump failed (%s); using ctl_mboxlist -u", e)
                batch = None
        if not batch:
            self.create_empty_db("mailboxes")
            with open(os.path.join(self.dump.path, "mailboxes.json"), "rb") as f:
                self.ctx.cyrus("ctl_mboxlist", "-u", stdin=f)
            self.note("rebuilt mailboxes.db with ctl_mboxlist -u from mailboxes.json (%d mailboxes)", want)
        if not self.ctx.dry_run:
            why = self.db_health("mailboxes", want)
            if why:
                raise BorgCyrusError(f"mailboxes.db is still {why} after the rebuild; see the log")

    def restore_annotations_db(self):
        why = self.db_health("annotations")
        if why is None:
            self.note("annotations.db is healthy")
            return
        batch = self.dump.batch(self.lay.database("annotations")[1])
        if not batch:
            if why == "missing":
                self.note("annotations.db is missing and the archive has no dump of it; Cyrus starts without annotations")
                return
            raise BorgCyrusError(f"annotations.db is {why} and the archive has no dump of it")
        self.note("annotations.db is %s; rebuilding it from the dump", why)
        self.load_batch("annotations", batch)

    def register_newer_mailboxes(self):
        """Mailboxes whose directory is in the spool but not in the dump
        (created while a live backup ran): add them from their cyrus.header."""
        known = {mb.uniqueid for mb in self.dump.mailboxes}
        headers = []
        for root in self.lay.partitions.values():
            uuid_root = os.path.join(root, "uuid")
            if not os.path.isdir(uuid_root):
                continue
            for a in os.scandir(uuid_root):
                for b in os.scandir(a.path) if a.is_dir() else ():
                    for c in os.scandir(b.path) if b.is_dir() else ():
                        if c.name not in known and os.path.exists(os.path.join(c.path, "cyrus.header")):
                            headers.append(os.path.join(c.path, "cyrus.header"))
        if headers:
            for i in range(0, len(headers), 500):
                self.ctx.cyrus("reconstruct", "-P", *headers[i:i + 500])
            self.note("registered %d mailbox(es) found in the spool but not in the dump", len(headers))

    def empty_excluded(self):
        names = set(self.dump.manifest.get("excluded_mailboxes") or [])
        boxes = [mb for mb in self.dump.mailboxes if mb.intname in names]
        for i in range(0, len(boxes), 200):
            self.ctx.cyrus("reconstruct", "--", *[mboxlist.admin_name(mb.intname, self.lay.unixhierarchysep) for mb in boxes[i:i + 200]])
        if boxes:
            self.note("reconstructed %d mailbox(es) whose messages were excluded (now empty)", len(boxes))

    def fix_ownership(self):
        fixed = 0
        skipped = []
        for root in [self.lay.configdirectory, self.lay.sievedir] + self.lay.all_partition_dirs():
            if os.path.isdir(root):
                fixed += safeio.chown_tree(root, self.uid, self.gid, dry_run=self.ctx.dry_run, skipped=skipped)
        if fixed:
            self.note("%s ownership of %d entries to %s:%s", "would fix" if self.ctx.dry_run else "fixed", fixed,
                      self.ctx.config["cyrus_user"], self.ctx.config["cyrus_group"])
        if skipped:
            log.warning("left the owner of %d hard-linked file(s) of other users alone, e.g. %s", len(skipped),
                        skipped[0])

    def run(self, start=False):
        t0 = time.monotonic()
        self.check_stopped()
        check_cyrus_version(self.ctx, self.dump, self.force, f"the dump in {self.dump.path}")
        self.fix_parents()
        if not self.ctx.dry_run:
            self.check_reachable()
        self.ensure_dirs()
        self.fix_ownership()
        self.restore_mailboxes_db()
        self.restore_annotations_db()
        self.ctx.cyrus("ctl_cyrusdb", "-r")
        self.register_newer_mailboxes()
        self.empty_excluded()
        self.ctx.cyrus("quota", "-f")
        self.fix_ownership()
        if start:
            Service(self.ctx.config["service"], self.ctx.runner).start()   # logs "Cyrus started in …"
            self.report.append("Cyrus started")
        self.note("full restore finished in %.2f s (%d mailboxes in the dump)", time.monotonic() - t0,
                  len(self.dump.mailboxes))
        return self.report
