"""Full-server restore: after `borg extract` of an archive, make Cyrus whole.

The archive holds the spools, configdirectory and the dump directory at their
original paths. This brings back mailboxes.db and annotations.db from the
binary-safe dumps when they are missing or damaged (falling back to
`ctl_mboxlist -u` of the JSON dump), re-registers mailboxes created after
the dump (`reconstruct -P`), recovers the databases (`ctl_cyrusdb -r`),
empties the folders whose messages were excluded on purpose (`reconstruct`),
recomputes quota usage (`quota -f`) and fixes ownership.
"""

import json
import logging
import os
import time

from borg_cyrus import dbbatch, mboxlist
from borg_cyrus.errors import BorgCyrusError
from borg_cyrus.service import Service

log = logging.getLogger("borg_cyrus.restore")


class Dump:
    """A dump directory as written by `before` (and extracted from an archive)."""

    def __init__(self, path):
        self.path = path
        mpath = os.path.join(path, "manifest.json")
        try:
            with open(mpath) as f:
                self.manifest = json.load(f)
        except FileNotFoundError:
            raise BorgCyrusError(f"{mpath} is missing; extract the dump directory from the archive "
                                 "or pass --dump-dir") from None
        except ValueError as e:
            raise BorgCyrusError(f"{mpath} is not valid JSON ({e}); the dump is damaged") from None
        self.mailboxes = mboxlist.load_dump(os.path.join(path, "mailboxes.json"))
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


class FullRestore:
    def __init__(self, ctx, dump_dir=None):
        self.ctx = ctx
        self.lay = ctx.layout
        self.dump = Dump(dump_dir or ctx.dump_dir)
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

    def check_reachable(self):
        """The cyrus user must be able to enter every parent of Cyrus's dirs
        (`borg extract` creates missing parents as root, mode 0700)."""
        for root in [self.lay.configdirectory] + self.lay.all_partition_dirs():
            parent = os.path.dirname(root)
            while parent and parent != "/":
                try:
                    st = os.stat(parent)
                except FileNotFoundError:
                    parent = os.path.dirname(parent)
                    continue
                ok = (st.st_mode & 0o001 or (st.st_gid == self.gid and st.st_mode & 0o010)
                      or (st.st_uid == self.uid and st.st_mode & 0o100))
                if not ok:
                    raise BorgCyrusError(f"the {self.ctx.config['cyrus_user']} user cannot enter {parent} "
                                         f"(mode {st.st_mode & 0o777:o}); run chmod o+x {parent}")
                parent = os.path.dirname(parent)

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
        os.chown(path, self.uid, self.gid)
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
        empty = os.path.join(self.lay.configdirectory, f".borg-cyrus-empty-{os.getpid()}")
        if not self.ctx.dry_run:
            with open(empty, "w"):
                pass
            os.chown(empty, self.uid, self.gid)
        try:
            self.ctx.cyrus("cvt_cyrusdb", empty, "flat", path, backend)
        finally:
            if os.path.exists(empty):
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
        roots = [self.lay.configdirectory, self.lay.sievedir] + self.lay.all_partition_dirs()
        fixed = 0
        for root in roots:
            if not os.path.isdir(root):
                continue
            for dirpath, dirnames, filenames in os.walk(root):
                for name in [None] + dirnames + filenames:
                    p = dirpath if name is None else os.path.join(dirpath, name)
                    try:
                        st = os.lstat(p)
                    except FileNotFoundError:
                        continue
                    if (st.st_uid, st.st_gid) != (self.uid, self.gid):
                        if not self.ctx.dry_run:
                            os.lchown(p, self.uid, self.gid)
                        fixed += 1
        if fixed:
            self.note("%s ownership of %d entries to %s:%s", "would fix" if self.ctx.dry_run else "fixed", fixed,
                      self.ctx.config["cyrus_user"], self.ctx.config["cyrus_group"])

    def run(self, start=False):
        t0 = time.monotonic()
        self.check_stopped()
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
