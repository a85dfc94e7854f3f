"""Built-in plugin: text dumps of Cyrus's databases and configuration, and
their restore (a dumper restores what it dumped).

- mailboxes.json: `ctl_mboxlist -d` (parsed and counted; an empty or
  truncated dump fails the backup). Reload with `ctl_mboxlist -u`.
- mailboxes.db.batch, annotations.db.batch: binary-safe `cyr_dbtool ... batch`
  SHOW output (no BEGIN, so deliveries are not blocked). Reload with
  `borg-cyrus restore full`, which feeds them back as BEGIN/SET/COMMIT.
- config/: copies of imapd.conf (+ @include files) and cyrus.conf.
- cyrus-version.txt, quota.txt.

`restore full` (restore_dump hook): mailboxes.db and annotations.db are
rebuilt from the batch dumps when missing or damaged (DatabaseRestore).
"""

import contextlib
import logging
import os
import shutil
import tempfile
import time

from borg_cyrus.cyrus import dbbatch, mboxlist
from borg_cyrus.cyrus.names import display
from borg_cyrus.safety import trust
from borg_cyrus.errors import BorgCyrusError
from borg_cyrus.hookspecs import hookimpl
from borg_cyrus.model import DumpRecord, MailboxList

log = logging.getLogger(__name__)
PLUGIN = "dumps"


def _open_new(path):
    return os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600), "wb")


def dump_mailbox_list(ctx, view, dump_dir):
    """mailboxes.json; returns a MailboxList."""
    path = os.path.join(dump_dir, "mailboxes.json")
    t0 = time.monotonic()
    with _open_new(path) as f:
        ctx.cyrus("ctl_mboxlist", "-d", conf=view.imapd_conf, stdout=f, changes=False)
    try:
        boxes = mboxlist.load_dump(path)
    except mboxlist.DumpError as e:
        raise BorgCyrusError(f"ctl_mboxlist -d gave an unusable dump: {e}") from None
    # the cyrus user can write mailboxes.db: nothing crafted may reach a path or the patterns file
    trust.check_mailboxes(boxes, f"{view.layout.database('mailboxes')[1]}")
    odd = odd_names(boxes)
    if not boxes:
        raise BorgCyrusError(
            "ctl_mboxlist -d listed no mailboxes; refusing to back up a server that looks empty "
            f"(check imapd.conf {view.imapd_conf} points at the right configdirectory)"
        )
    rec = DumpRecord(
        "mailboxes.json",
        ["mailboxes.json"],
        len(boxes),
        os.path.getsize(path),
        time.monotonic() - t0,
        PLUGIN,
        {"format": "ctl_mboxlist -d", "reload": "ctl_mboxlist -u < mailboxes.json"},
        manifest={"odd_names": odd} if odd else {},
    )
    return MailboxList(rec, boxes)


def odd_names(boxes, shown=10):
    """Mailboxes whose names a mail user made odd ('..' as a folder name):
    data like any other (in Cyrus 3.x no name becomes a path), backed up,
    named in one warning line and in the manifest (`odd_names`)."""
    odd = [
        {"name": display(mb.intname), "intname": mb.intname, "why": why} for mb in boxes if (why := trust.odd_name(mb))
    ]
    if odd:
        more = len(odd) - shown
        log.warning(
            "%d mailbox name(s) with a '.' or '..' component, backed up as they are (Cyrus never makes a "
            "path of them): %s%s",
            len(odd),
            ", ".join(f"{x['name']} ({x['why']})" for x in odd[:shown]),
            f" and {more} more (manifest.json: odd_names)" if more > 0 else "",
        )
    return odd


def dump_db(ctx, view, dump_dir, name):
    backend, dbpath = view.layout.database(name)
    if not os.path.exists(dbpath):
        log.warning("%s database %s does not exist; nothing to dump", name, dbpath)
        return None
    filename = f"{os.path.basename(dbpath)}.batch"
    path = os.path.join(dump_dir, filename)
    t0 = time.monotonic()
    with _open_new(path) as f:
        ctx.cyrus(
            "cyr_dbtool", dbpath, backend, "batch", conf=view.imapd_conf, input=b"SHOW\n", stdout=f, changes=False
        )
    with open(path, "rb") as f:
        data = f.read()
    try:
        records = dbbatch.parse(data)
    except dbbatch.BatchFormatError as e:
        raise BorgCyrusError(f"cyr_dbtool batch dump of {dbpath} is unusable: {e}") from None
    extra = {"format": f"cyr_dbtool {backend} batch SHOW", "database": dbpath, "backend": backend}
    if name == "mailboxes":
        extra["name_records"] = sum(1 for k, _ in records if k[:1] == b"N")
    return DumpRecord(filename, [filename], len(records), len(data), time.monotonic() - t0, PLUGIN, extra)


def _private_dirs(top, path):
    """mkdir -p below top, every new directory 0700 (whatever the umask)."""
    rel = os.path.relpath(path, top)
    cur = top
    for part in rel.split(os.sep):
        cur = os.path.join(cur, part)
        if not os.path.isdir(cur):
            os.mkdir(cur)
            os.chmod(cur, 0o700)


def copy_configs(ctx, dump_dir):
    lay = ctx.layout
    os.mkdir(os.path.join(dump_dir, "config"), 0o700)
    files = []
    for src in list(lay.conf.files) + ([lay.cyrus_conf] if lay.cyrus_conf else []):
        if not os.path.isfile(src):
            continue
        rel = os.path.join("config", os.path.abspath(src).lstrip("/"))
        dst = os.path.join(dump_dir, rel)
        _private_dirs(dump_dir, os.path.dirname(dst))
        shutil.copyfile(src, dst)
        os.chmod(dst, 0o600)
        files.append(rel)
    return DumpRecord(
        "config",
        files,
        len(files),
        sum(os.path.getsize(os.path.join(dump_dir, f)) for f in files),
        0.0,
        PLUGIN,
        {"sources": [os.path.abspath(p) for p in lay.conf.files] + [lay.cyrus_conf]},
    )


def dump_version(ctx, view, dump_dir):
    if not ctx.tools.has("cyr_info"):
        return None
    r = ctx.cyrus("cyr_info", "version", conf=view.imapd_conf, changes=False, check=False)
    version = r.text.strip()
    if r.returncode or not version:
        log.warning("cyr_info version failed; Cyrus version not recorded")
        return None
    with _open_new(os.path.join(dump_dir, "cyrus-version.txt")) as f:
        f.write((version + "\n").encode())
    return DumpRecord(
        "cyrus-version.txt",
        ["cyrus-version.txt"],
        1,
        len(version) + 1,
        r.seconds,
        PLUGIN,
        manifest={"cyrus_version": version},
    )


def dump_quota(ctx, view, dump_dir):
    path = os.path.join(dump_dir, "quota.txt")
    with _open_new(path) as f:
        r = ctx.cyrus("quota", conf=view.imapd_conf, stdout=f, changes=False, check=False)
    if r.returncode:
        log.warning("quota listing failed (exit %d); quota.txt may be incomplete", r.returncode)
    lines = max(0, sum(1 for _ in open(path, "rb")) - 1)
    return DumpRecord(
        "quota.txt",
        ["quota.txt"],
        lines,
        os.path.getsize(path),
        r.seconds,
        PLUGIN,
        {"format": "quota (listing; limits are restored from the quota files)"},
    )


@hookimpl
def mailbox_list(ctx, view, dump_dir):
    return dump_mailbox_list(ctx, view, dump_dir)


@hookimpl(tryfirst=True)
def dump(ctx, view, dump_dir):
    out = []
    opts = ctx.config["dumps"]
    if opts["mailboxes_db"]:
        out.append(dump_db(ctx, view, dump_dir, "mailboxes"))
    if opts["annotations_db"]:
        out.append(dump_db(ctx, view, dump_dir, "annotations"))
    out.append(copy_configs(ctx, dump_dir))
    out.append(dump_version(ctx, view, dump_dir))
    if opts["quota"]:
        out.append(dump_quota(ctx, view, dump_dir))
    return [r for r in out if r]


# -- restore full: rebuild what was dumped ------------------------------------


class DatabaseRestore:
    """mailboxes.db and annotations.db back from the binary-safe dumps when
    they are missing or damaged (ctl_mboxlist -u of mailboxes.json when the
    binary dump cannot be loaded)."""

    def __init__(self, ctx, dump):
        self.ctx, self.dump, self.lay = ctx, dump, ctx.layout
        self.uid, self.gid = ctx.cyrus_ids()
        self.report = []

    def note(self, msg, *args):
        self.report.append(msg % args if args else msg)  # restore full logs what restore_dump returns

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
                self.note("moved the %s %s to %s", "old" if self.dump.replace else "damaged", path, aside)
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
        why = "replaced by a newer dump" if self.dump.replace else self.db_health("mailboxes", want)
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
        why = "replaced by a newer dump" if self.dump.replace else self.db_health("annotations")
        if why is None:
            self.note("annotations.db is healthy")
            return
        batch = self.dump.batch(self.lay.database("annotations")[1])
        if not batch:
            if why == "missing":
                self.note(
                    "annotations.db is missing and the archive has no dump of it; Cyrus starts without annotations"
                )
                return
            raise BorgCyrusError(f"annotations.db is {why} and the archive has no dump of it")
        self.note("annotations.db is %s; rebuilding it from the dump", why)
        self.load_batch("annotations", batch)


@hookimpl(tryfirst=True)
def restore_dump(ctx, dump):
    job = DatabaseRestore(ctx, dump)
    job.restore_mailboxes_db()
    job.restore_annotations_db()
    return job.report
