"""`borg-cyrus verify`: the restore drill that proves an archive good.

1. extract the whole archive into a private directory (`borg extract`, with
   the repository and passphrase from borgmatic's configuration): made with
   mkdtemp in <work_directory>/verify (or --workdir), root's 0700, below
   directories only root can write to (drill_parent), so no local user can
   pre-create, rename or swap anything the drill uses; the extracted tree is
   sanitized at once, while still root's alone (plain files and directories of
   the cyrus user: no set-id or execute bits, no devices, FIFOs, sockets or
   symlinks), and the archived layout gets the checks of every restore;
2. check the archive against what the backup recorded: every mailbox of the
   dump has its directory, a readable cyrus.index with the message count of
   manifest.json, and every message it lists has its file, of the recorded
   size; --deep: the file's SHA-1 equals the GUID in the index (messages
   `exclude.rules` left out, listed in the manifest, are skipped);
3. open the private directory to the cyrus user's group only (root:mail 0710)
   and start a throwaway Cyrus on the extracted tree (borg_cyrus.cyrus.sandbox,
   config rewritten to the extracted paths, IMAP on a socket in that
   directory, no TCP port) after the same `restore full` steps a disaster
   recovery runs;
4. every mailbox must be in the restored server's mailbox list, of its type;
   email mailboxes are opened over IMAP with the expected message count
   (--deep: served byte-identical); the types IMAP cannot open (sieve
   scripts, calendars, ...: `Mailbox.imap_opens`) are checked on the
   restored server's disk: readable cyrus.index, every message file;
5. tear everything down; exit 1 naming each mailbox that differs. A drill
   whose verify was killed is removed by the next one (clean_stale: its lock
   file is no longer held), its throwaway Cyrus stopped first.

Counts differ legitimately only in `live` mode (mail arrives while borg
reads): there a count difference is a warning, a missing file still fails.
"""

import collections
import fcntl
import hashlib
import json
import logging
import os
import shutil
import stat
import sys
import tempfile
import time

from borg_cyrus import state as state_mod
from borg_cyrus.backup import rules
from borg_cyrus.restore import archive as archive_mod
from borg_cyrus.cyrus import storage, imapview, index, mboxlist
from borg_cyrus.safety import pathpolicy, safeio, trust
from borg_cyrus.errors import BorgCyrusError
from borg_cyrus.cyrus.names import display
from borg_cyrus.restore.listing import human_size
from borg_cyrus.restore import drillserver
from borg_cyrus.restore.session import archived_conf_values, check_archived
from borg_cyrus.tools import progress

log = logging.getLogger(__name__)

PARENT_MODE = 0o711  # <work_directory>/verify: like the work directory (the cyrus user gets through)
DRILL_MODE = 0o700  # the drill's own directory while root works alone in it
OPEN_MODE = 0o710  # ... and once its throwaway Cyrus runs: root and the cyrus user's group
LOCK = ".drill.lock"  # held while a drill runs: without it, the next verify removes a killed drill's files


def _dir_problem(st, last):
    """Why a directory on the way to the drill's could let someone else in, or None."""
    if not stat.S_ISDIR(st.st_mode):
        return "is not a directory"
    if st.st_uid not in (0, os.geteuid()):  # root runs verify
        return f"belongs to uid {st.st_uid}, not to root"
    if st.st_mode & 0o022 and (last or not st.st_mode & stat.S_ISVTX):
        return f"is writable by others (mode {stat.S_IMODE(st.st_mode):o})"
    return None


def drill_parent(path, fix, dry_run=False):
    """The directory drills are made in, resolved, made root's PARENT_MODE if
    missing. It and every directory above it must be root's and writable by
    no one else (above it a sticky one such as /tmp is fine: only root can
    rename root's entry there), so nothing in it can be pre-created, renamed
    or swapped by another user. fix: how to put it right, for the error line."""
    real = os.path.realpath(path)
    parts = [p for p in real.split("/") if p]
    for i in range(len(parts) + 1):
        cur = "/" + "/".join(parts[:i])
        last = i == len(parts)
        try:
            st = os.lstat(cur)
        except FileNotFoundError:
            if dry_run:
                return real
            try:
                os.mkdir(cur, PARENT_MODE)
            except FileExistsError:  # made meanwhile: checked as found
                pass
            st = os.lstat(cur)
            if st.st_uid == os.geteuid() and stat.S_ISDIR(st.st_mode):
                fd = os.open(cur, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
                try:
                    os.fchmod(fd, PARENT_MODE)  # whatever the umask
                    st = os.fstat(fd)
                finally:
                    os.close(fd)
        why = _dir_problem(st, last)
        if why:
            shown = cur if cur == real else f"{cur} (on the way to {real})"
            raise BorgCyrusError(
                f"the restore drill's directory {shown} {why}: another user could swap its files; {fix}"
            )
    why = pathpolicy.system_reason(real)
    if why:
        raise BorgCyrusError(f"the restore drill's directory {real} {why}; {fix}")
    return real


def make_private(parent):
    """(directory, descriptor of its lock): mkdtemp in parent, root's,
    DRILL_MODE, checked; its lock file held (flock) while the drill runs."""
    base = tempfile.mkdtemp(prefix=f"verify-{time.strftime('%Y%m%d-%H%M%S')}-", dir=parent)
    fd = os.open(base, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        os.fchmod(fd, DRILL_MODE)
        st = os.fstat(fd)
    finally:
        os.close(fd)
    if st.st_uid != os.geteuid() or stat.S_IMODE(st.st_mode) != DRILL_MODE:
        raise BorgCyrusError(f"{base} is not root's {DRILL_MODE:o} right after mkdtemp; something else runs there")
    lock = os.open(os.path.join(base, LOCK), os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    fcntl.flock(lock, fcntl.LOCK_EX)
    return base, lock


def clean_stale(parent):
    """Remove the drills in parent that a killed verify left (their lock file
    is not held), stopping their throwaway Cyrus first; a drill running now
    holds its lock, one kept with --keep has none. Returns the removed paths."""
    removed = []
    for entry in sorted(os.scandir(parent), key=lambda e: e.name):
        if not entry.name.startswith("verify-") or not entry.is_dir(follow_symlinks=False):
            continue
        try:
            fd = os.open(os.path.join(entry.path, LOCK), os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            continue
        try:
            if os.path.isfile(os.path.join(entry.path, "cyrus", "imapd.conf")):
                from borg_cyrus.cyrus.sandbox import Sandbox

                Sandbox(os.path.join(entry.path, "cyrus"), tcp=False).stop()
            shutil.rmtree(entry.path)
            removed.append(entry.path)
            log.warning("removed %s, left by a restore drill that did not finish (killed?)", entry.path)
        except (OSError, BorgCyrusError) as e:
            log.warning("could not remove %s, left by a restore drill that did not finish: %s", entry.path, e)
        finally:
            os.close(fd)
    return removed


class Drill:
    def __init__(self, ctx, repo, archive, base, deep=False):
        self.ctx = ctx
        self.repo = repo
        self.archive = archive
        self.base = base
        self.root = os.path.join(base, "root")
        self.deep = deep
        self.failures = {}  # display name -> [problems]
        self.warnings = []
        self.info = []
        self.stats = {"mailboxes": 0, "messages": 0, "bytes": 0, "hashed": 0, "served": 0, "on_disk": 0}
        self.on_disk = {}  # display name -> kind, of mailboxes IMAP cannot open
        self.removed = {}  # "/archived/path" -> kind, of what sanitizing left out
        self.sandbox = None
        self.where = f"archive {archive}"

    def fail(self, intname, problem):
        self.failures.setdefault(display(intname) if intname else "(archive)", []).append(problem)

    # -- 1. extract ----------------------------------------------------------
    def extract(self):
        t0 = time.monotonic()
        with progress.Progress("verify: extract", unit=f"archive {self.archive}"):
            self.repo.extract_all(self.archive, self.root)
        self.info.append(f"extracted archive {self.archive} in {time.monotonic() - t0:.2f} s")
        self.sanitize()

    def sanitize(self):
        """The extracted files are untrusted: plain data of the cyrus user (like
        every restore's staging tree), while the directory is still root's alone."""
        uid, gid = self.ctx.cyrus_ids()
        removed = safeio.sanitize_tree(self.root, uid, gid)
        self.removed = {"/" + p: k for p, k in removed}
        if removed:
            shown = ", ".join(f"/{p} ({k})" for p, k in removed[:10])
            one = len(removed) == 1
            self.warnings.append(
                f"left out {len(removed)} entr{'y' if one else 'ies'} of the archive that "
                f"{'is not a regular file or directory' if one else 'are not regular files or directories'}: "
                f"{shown}" + (" …" if len(removed) > 10 else "")
            )

    def check_location(self, key, path):
        """An archived directory the drill builds on must be a directory in the
        extracted tree, not something sanitizing removed (a symlink ...)."""
        cur, present = "", True
        for part in [p for p in path.split("/") if p]:
            cur += "/" + part
            kind = self.removed.get(cur)
            if kind is None and present:
                try:
                    st = os.lstat(self.root + cur)
                except FileNotFoundError:
                    present = False  # made empty later; a removed entry below still counts
                    continue
                if stat.S_ISDIR(st.st_mode):
                    continue
                kind = safeio.kind(st.st_mode)
            if kind is None:
                continue
            what = path if cur == path else f"{path} (its parent {cur})"
            raise trust.UntrustedEntry(
                f"{self.where}: {key} {what} is {kind} in the archive, not a directory; the archive looks "
                "forged or damaged, so the drill stopped"
            )

    def find_dump(self):
        cand = self.root + self.ctx.dump_dir
        if os.path.isfile(os.path.join(cand, "manifest.json")):
            return self.ctx.dump_dir
        for p in sorted(self.repo.list_paths(self.archive)):
            if p.endswith("/dump/manifest.json"):
                return trust.check_archived_path(os.path.dirname(p), "dump directory", self.where)
        raise BorgCyrusError(
            f"archive {self.archive} holds no borg-cyrus dump (no */dump/manifest.json); was it made with borg-cyrus?"
        )

    def load(self):
        from borg_cyrus.restore.dump import Dump

        self.dump_path = self.find_dump()
        self.check_location("dump directory", self.dump_path)
        self.dump = Dump(self.root + self.dump_path, where=self.where)
        m = self.dump.manifest
        self.conf_values = archived_conf_values(self.dump.path, m)
        try:
            self.alay = storage.PathLayout.from_manifest(m, self.conf_values)
        except (ValueError, TypeError, AttributeError) as e:
            raise BorgCyrusError(f"{self.where}: {e}; the dump is too old or damaged") from None
        check_archived(self.dump, self.alay, self.where)  # the checks of every restore
        for key, path in drillserver.locations(self.alay):
            self.check_location(key, path)
        r = self.root
        self.slay = storage.PathLayout(
            configdirectory=r + self.alay.configdirectory,
            partitions={k: r + v for k, v in self.alay.partitions.items()},
            sievedir=r + self.alay.sievedir,
            metapartitions={k: r + v for k, v in self.alay.metapartitions.items()},
            archivepartitions={k: r + v for k, v in self.alay.archivepartitions.items()},
            hashimapspool=self.alay.hashimapspool,
            fulldirhash=self.alay.fulldirhash,
            virtdomains=self.alay.virtdomains,
            unixhierarchysep=True,
            legacy_dirs=self.alay.legacy_dirs,
            quota_backend=self.alay.quota_backend,
            quota_path=r + self.alay.quota_path,
            metapartition_files=self.alay.metapartition_files,
            defaultpartition=self.alay.defaultpartition,
        )
        self.live_mode = (m.get("view") or m.get("mode")) == "live"
        self.excluded = set(m.get("excluded_mailboxes") or [])
        self.rule_left = rules.archived(m, self.dump.mailboxes)  # {intname: UIDs} left out on purpose
        if self.rule_left:
            n = sum(len(u) for u in self.rule_left.values())
            self.info.append(
                f"{n} message(s) in {len(self.rule_left)} mailbox(es) left out by size/age rules (on purpose)"
            )
        self.counts = m.get("mailboxes") or {}
        self.boxes = [mb for mb in self.dump.mailboxes if mb.has_spool]

    # -- 2. files ------------------------------------------------------------
    def check_files(self):
        self.indexes = {}
        for mb in progress.each("verify: files", self.boxes, "mailboxes"):
            self.stats["mailboxes"] += 1
            try:
                d = storage.data_dir(self.slay, mb)
            except KeyError:
                self.fail(mb.intname, f"partition {mb.partition} is not in the archived layout")
                continue
            if not os.path.isdir(d):
                self.fail(mb.intname, f"its directory {d[len(self.root) :]} is not in the archive")
                continue
            ipath = os.path.join(storage.index_dir(self.slay, mb), "cyrus.index")
            try:
                ix = index.read(ipath)
            except FileNotFoundError:
                self.fail(mb.intname, "cyrus.index is not in the archive")
                continue
            except (OSError, ValueError) as e:
                self.fail(mb.intname, f"cyrus.index is unreadable: {e}")
                continue
            self.indexes[mb.intname] = ix
            expected = (self.counts.get(mb.intname) or {}).get("messages")
            if expected is not None and expected != ix.exists:
                msg = f"the archived index holds {ix.exists} message(s), the backup counted {expected}"
                if self.live_mode:
                    self.warnings.append(f"{display(mb.intname)}: {msg} (live mode: mail changed while borg read)")
                else:
                    self.fail(mb.intname, msg)
            if mb.intname in self.excluded:
                continue
            if not ix.detailed:
                self.warnings.append(
                    f"{display(mb.intname)}: index version {ix.minor_version}: only file presence is checked"
                )
            self.scan_messages(mb, ix, d, "from the archive", count=True)

    def scan_messages(self, mb, ix, d, where, count=False):
        """Fail mb for each message file ix lists below d that is missing or
        of another size; count=True adds them to the stats (--deep: hashes)."""
        arch_dir = None
        if self.slay.archivepartitions.get(mb.partition):
            arch_dir = storage.mailbox_dir(self.slay, self.slay.archivepartitions[mb.partition], mb)
        missing, wrong = [], []
        left = self.rule_left.get(mb.intname, ())
        records, forged = index.vet(ix.live())  # the archive is untrusted: records no Cyrus writes
        wrong += [f"UID {uid}: its index record is forged or damaged ({problem})" for uid, problem in forged]
        for rec in records:
            if rec.uid in left:
                continue
            f = os.path.join(arch_dir if (rec.archived and arch_dir) else d, f"{rec.uid}.")
            try:
                st = os.lstat(f)
            except FileNotFoundError:
                missing.append(rec.uid)
                continue
            if not stat.S_ISREG(st.st_mode):  # the archive is untrusted: never follow or block on it
                wrong.append(f"UID {rec.uid}: {safeio.kind(st.st_mode)} instead of a message file")
                continue
            if count:
                self.stats["messages"] += 1
                self.stats["bytes"] += st.st_size
            if rec.size is not None and st.st_size != rec.size:
                wrong.append(f"UID {rec.uid}: {st.st_size} bytes, the index says {rec.size}")
                continue
            if count and self.deep and rec.guid:
                h = hashlib.sha1()
                with os.fdopen(safeio.open_regular(f), "rb") as fh:
                    for chunk in iter(lambda: fh.read(1 << 20), b""):
                        h.update(chunk)
                self.stats["hashed"] += 1
                if h.digest() != rec.guid:
                    wrong.append(f"UID {rec.uid}: content differs from the index GUID (SHA-1)")
        if missing:
            shown = ", ".join(str(u) for u in missing[:10]) + (" …" if len(missing) > 10 else "")
            self.fail(mb.intname, f"{len(missing)} message file(s) missing {where} (UID {shown})")
        for w in wrong[:10]:
            self.fail(mb.intname, w)

    # -- 3. throwaway Cyrus ---------------------------------------------------
    def start_server(self):
        self.sandbox, self.sctx, line = drillserver.start(self)
        self.info.append(line)

    # -- 4. what IMAP clients see ------------------------------------------------
    def check_imap(self):
        r = self.sctx.cyrus("ctl_mboxlist", "-d", changes=False)
        restored = {mb.intname: mb for mb in mboxlist.iter_dump(r.text.splitlines()) if mb.has_spool}
        conn = self.sandbox.imap("cyrus")
        try:
            for mb in progress.each("verify: imap", self.boxes, "mailboxes"):
                rmb = restored.get(mb.intname)
                if rmb is None:
                    self.fail(mb.intname, "not in the restored server's mailbox list")
                    continue
                if rmb.kind != mb.kind:
                    self.fail(
                        mb.intname, f"the restored server lists it as a {rmb.kind} mailbox, the archive as {mb.kind}"
                    )
                    continue
                ix = self.indexes.get(mb.intname)
                if ix is None:
                    continue
                left = self.rule_left.get(mb.intname, ())
                want = 0 if mb.intname in self.excluded else ix.exists - sum(r.uid in left for r in ix.live())
                if mb.imap_opens:
                    self.check_served(conn, mb, ix, want)
                else:
                    self.check_restored_files(rmb, want)
        finally:
            try:
                conn.logout()
            except Exception:
                pass

    def check_served(self, conn, mb, ix, want):
        name = '"' + mboxlist.external_name(mb.intname).replace("\\", "\\\\").replace('"', '\\"') + '"'
        conn.setacl(name, "cyrus", "lrs")
        typ, data = conn.select(name, readonly=True)
        if typ != "OK":
            self.fail(mb.intname, f"the restored server cannot open it: {data}")
            return
        exists = int(data[0] or 0)
        if exists != want:
            self.fail(mb.intname, f"the restored server shows {exists} message(s), expected {want}")
        elif self.deep and exists and mb.intname not in self.excluded:
            left = self.rule_left.get(mb.intname, ())
            guids = {r.uid: r.guid for r in ix.live() if r.guid and r.uid not in left}
            got = imapview.served_sha1(conn, sorted(guids))
            bad = [u for u in sorted(guids) if got.get(u) != guids[u]]
            if bad:
                self.fail(
                    mb.intname,
                    f"{len(bad)} message(s) served with other bytes than archived "
                    f"(UID {', '.join(map(str, bad[:10]))})",
                )
        self.stats["served"] += exists
        conn.close()

    def check_restored_files(self, mb, want):
        """A mailbox IMAP cannot open, as the restored server holds it on disk."""
        self.stats["on_disk"] += 1
        self.on_disk[display(mb.intname)] = mb.kind
        try:
            d = storage.data_dir(self.slay, mb)
            ix = index.read(os.path.join(storage.index_dir(self.slay, mb), "cyrus.index"))
        except (KeyError, OSError, ValueError) as e:
            self.fail(mb.intname, f"the restored server's cyrus.index is unreadable: {e}")
            return
        if ix.exists != want:
            self.fail(mb.intname, f"the restored server holds {ix.exists} message(s), expected {want}")
        self.scan_messages(mb, ix, d, "on the restored server")

    def orphans(self):
        known = {mb.uniqueid for mb in self.boxes}
        n = 0
        for root in self.slay.roots():
            base = os.path.join(root, "uuid")
            for dirpath, dirnames, _files in os.walk(base):
                if dirpath.count(os.sep) - base.count(os.sep) == 2:
                    n += sum(1 for d in dirnames if d not in known)
                    dirnames[:] = []
        if n:
            self.info.append(
                f"{n} directory(ies) in the archive without a mailbox in the dump (registered by restore full)"
            )

    def teardown(self, keep=False):
        if self.sandbox is not None:
            self.sandbox.stop()
        if not keep:
            shutil.rmtree(self.base, ignore_errors=True)

    def report(self):
        m = self.dump.manifest if getattr(self, "dump", None) else {}
        return {
            "archive": self.archive,
            "repository": str(self.repo),
            "created": m.get("created"),
            "hostname": m.get("hostname"),
            "mode": m.get("mode"),
            "deep": self.deep,
            "stats": self.stats,
            "on_disk": self.on_disk,
            "failures": self.failures,
            "warnings": self.warnings,
            "info": self.info,
            "ok": not self.failures,
        }


def format_report(rep):
    out = [
        f"verify: archive {rep['archive']} in {rep['repository']}"
        + (f" (made {rep['created']} on {rep['hostname']}, mode {rep['mode']})" if rep.get("created") else "")
    ]
    out += [f"  {line}" for line in rep["info"]]
    s = rep["stats"]
    kinds = ", ".join(f"{k}: {n}" for k, n in sorted(collections.Counter(rep["on_disk"].values()).items()))
    out.append(
        f"  checked {s['mailboxes']} mailboxes, {s['messages']} message files ({human_size(s['bytes'])}), "
        f"{s['served']} messages served over IMAP"
        + (f", {s['hashed']} hashed" if rep["deep"] else "")
        + (f"; {s['on_disk']} mailbox(es) IMAP cannot open checked on disk ({kinds})" if kinds else "")
    )
    if "seconds" in rep:
        out.append(
            f"  drill took {rep['seconds']:.2f} s" + (f"; files kept in {rep['kept']}" if rep.get("kept") else "")
        )
    for w in rep["warnings"]:
        out.append(f"  warning: {w}")
    for name in sorted(rep["failures"]):
        for p in rep["failures"][name]:
            out.append(f"  FAIL {name}: {p}")
    if rep["ok"]:
        out.append(
            "RESULT: OK — every mailbox and message the backup recorded is in the archive"
            + (" byte for byte" if rep["deep"] else "")
            + " and a restored Cyrus serves it"
        )
    elif "(archive)" in rep["failures"]:
        out.append(f"RESULT: FAILED — the drill stopped: {rep['failures']['(archive)'][0]}")
    else:
        names = sorted(rep["failures"])
        out.append(f"RESULT: FAILED — {len(names)} mailbox(es) differ: {', '.join(names)}")
    return "\n".join(out) + "\n"


def parent_dir(ctx, workdir, dry_run=False):
    """--workdir, or <work_directory>/verify: checked (drill_parent), and one
    the cyrus user can get through."""
    if workdir:
        path = os.path.abspath(workdir)
        fix = "pass --workdir a directory of root's that nobody else can write to, nor to any directory above it"
    else:
        if not dry_run:
            state_mod.secure_dir(ctx.work_dir, state_mod.WORK_DIR_MODE)
        path = os.path.join(ctx.work_dir, "verify")
        fix = "remove it (borg-cyrus makes it) or pass --workdir"
    real = drill_parent(path, fix, dry_run=dry_run)
    if not dry_run:
        uid, gid = ctx.cyrus_ids()
        blocked = safeio.blocking_parent(real, uid, gid)
        if blocked:
            where, st = blocked
            raise BorgCyrusError(
                f"the {ctx.config['cyrus_user']} user cannot enter {where} (mode {stat.S_IMODE(st.st_mode):o}), "
                f"on the way to the restore drill's directory {real}: run chmod o+x {where} or pass another --workdir"
            )
    return real


def open_to_cyrus(ctx, base):
    """The drill's directory, for its throwaway Cyrus: root and the cyrus
    user's group enter it, nobody else (the tree below is sanitized)."""
    _uid, gid = ctx.cyrus_ids()
    fd = os.open(base, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        os.fchown(fd, 0, gid)
        os.fchmod(fd, OPEN_MODE)
    finally:
        os.close(fd)


def run(ctx, args, metrics_run=None):
    parent = parent_dir(ctx, args.workdir, dry_run=ctx.dry_run)
    repo = archive_mod.open_repository(args.borgmatic_config, args.repository, ctx.runner)
    name = repo.resolve(args.archive, at=getattr(args, "at", None))
    if ctx.dry_run:
        print(
            f"verify: would extract archive {name} of {repo} below {parent}, restore it into a throwaway "
            f"Cyrus, check every mailbox{' and message byte' if args.deep else ''}, and remove it again"
        )
        return 0
    clean_stale(parent)
    base, lock = make_private(parent)
    drill = Drill(ctx, repo, name, base, deep=args.deep)
    t0 = time.monotonic()
    try:
        drill.extract()
        drill.load()
        drill.check_files()
        drill.orphans()
        open_to_cyrus(ctx, base)
        drill.start_server()
        drill.check_imap()
    except BorgCyrusError as e:
        drill.fail(None, str(e))
    finally:
        if args.keep:  # kept: not a killed drill's leftovers
            os.unlink(os.path.join(base, LOCK))
        drill.teardown(keep=args.keep)
        os.close(lock)
    rep = drill.report()
    rep["seconds"] = round(time.monotonic() - t0, 2)
    if args.keep:
        rep["kept"] = base
    if metrics_run is not None:  # the metrics' values, in the JSON report too
        s, n_failed = rep["stats"], len(rep["failures"])
        rep.update(
            metrics_run.conclude(rep["ok"], mailboxes=s["mailboxes"], messages=s["messages"], failed_mailboxes=n_failed)
        )
    sys.stdout.write(json.dumps(rep, indent=1, ensure_ascii=False) + "\n" if args.json else format_report(rep))
    if not rep["ok"]:
        whole = rep["failures"].get("(archive)")  # the drill stopped: say why
        log.error("verify: archive %s FAILED: %s", name, whole[0] if whole else ", ".join(sorted(rep["failures"])))
        return 1
    return 0
