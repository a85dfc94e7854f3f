"""Partial restores into a LIVE Cyrus: list an archive, one user, one mailbox.

Cyrus keeps running, other users are not touched. Only what is needed is
extracted (`borg extract ARCHIVE PATH...`) into a private staging directory
and then moved (same filesystem) or copied into place, owned by cyrus:mail:

1. the archived dump (<work_directory>/dump): mailbox list, manifest with
   the archived layout — where every file was;
2. the live mailbox list (`ctl_mboxlist -d`): what exists now, tombstones
   of deleted mailboxes included;
3. a plan per mailbox: *create* (absent or tombstone: the archived directory
   comes back with its uniqueid, or a fresh one when the old one is still in
   use, e.g. by a deleted-but-not-purged copy) or *merge* (the mailbox
   exists: the archived messages it lacks — by GUID — are added with new
   UIDs; only with --force unless it is empty). `--into FOLDER` always
   creates new mailboxes: the archived index is kept (same UIDs, order,
   flags), the cyrus.header is rewritten with the new name and uniqueid;
4. `reconstruct -P <header>` registers created mailboxes (it replaces a
   tombstone of the same name), `reconstruct` re-indexes, `quota -f`
   recomputes usage; annotations.db entries of the restored mailboxes come
   back from annotations.db.batch; seen/subscription files, sieve scripts and
   the quota file of a restored user are put back unless live ones exist.

`--dry-run` runs the read-only steps (the dump is extracted into a private
temporary directory, the live mailbox list is read) and prints exactly what
would be extracted and run; the server is not changed.
"""

import errno
import json
import logging
import os
import secrets
import shutil
import tempfile
import time
from dataclasses import dataclass, field

from borg_cyrus.restore import archive as archive_mod
from borg_cyrus.cyrus import header, storage, dbbatch, imapdconf, imapview, index, mboxlist
from borg_cyrus.safety import pathpolicy, privdrop, safeio, trust
from borg_cyrus import state as state_mod
from borg_cyrus.errors import BorgCyrusError, ConfigError
from borg_cyrus.model import nest_free

log = logging.getLogger(__name__)

UID_GAP = 1000          # merged messages start this far above the live last UID (LMTP keeps delivering)
UNIQUEID_CHARS = "abcdefghijklmnopqrstuvwxyz0123456789"


# -- names ------------------------------------------------------------------

def to_intname(name):
    """Internal name of an admin-namespace name ('/' separator, Unicode or
    modified UTF-7, '@domain' allowed)."""
    name = name.strip().strip("/")
    if not name:
        raise ConfigError("empty mailbox name")
    decoded = imapview.mutf7_decode(name) if "&" in name else name
    try:
        already = decoded != name and imapview.mutf7_encode(decoded) == name
    except Exception:
        already = False
    return mboxlist.internal_name(name if already else imapview.mutf7_encode(name))


def display(intname):
    """Human-readable external name (Unicode, '/' separator)."""
    return imapview.mutf7_decode(mboxlist.external_name(intname))


def parent_name(intname):
    dom, local = (intname.split("!", 1) if "!" in intname else (None, intname))
    if "." not in local:
        return None
    p = local.rsplit(".", 1)[0]
    return f"{dom}!{p}" if dom else p


def new_uniqueid(taken=()):
    while True:
        u = "".join(secrets.choice(UNIQUEID_CHARS) for _ in range(24))
        if u not in taken:
            return u


def human_size(n):
    n = int(n or 0)
    if n < 1024:
        return f"{n} B"
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        n /= 1024.0
        if n < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}"


# -- the archive ------------------------------------------------------------

def archived_conf_values(dump_path, manifest):
    """Values of the archived imapd.conf (and @include files) from the dump's config copy."""
    values = {}
    cfgdir = os.path.join(dump_path, "config")
    files = []
    main = manifest.get("imapd_conf")
    if main:
        files.append(os.path.join(cfgdir, main.lstrip("/")))
    for root, _dirs, names in os.walk(cfgdir):
        for n in sorted(names):
            p = os.path.join(root, n)
            if p not in files and not n.startswith("cyrus.conf"):
                files.append(p)
    for p in files:
        try:
            with open(p, encoding="utf-8", errors="surrogateescape") as f:
                text = "\n".join(ln for ln in f.read().splitlines() if not ln.lstrip().startswith("@"))
            vals, _ = imapdconf.parse_text(text, p)
        except (OSError, ConfigError):
            continue
        for k, v in vals.items():
            values.setdefault(k, v)
    return values


class ArchiveSession:
    """An archive opened for reading: repository, archive name, a private
    staging directory, the archived dump and layout."""

    def __init__(self, ctx, borgmatic_config=None, repository=None, archive=None, staging=None, keep_staging=False):
        self.ctx = ctx
        self.repo = archive_mod.open_repository(borgmatic_config, repository, ctx.runner)
        self.archive = self.repo.resolve(archive)
        self.staging_parent = staging
        self.keep_staging = keep_staging
        self.dir = None
        self.dump = None
        self.layout = None
        self.tree_override = None    # "." in the child that places files as the cyrus user

    def __enter__(self):
        parent = self.staging_parent
        if parent is not None and pathpolicy.system_reason(parent):
            raise ConfigError(f"--staging {parent} {pathpolicy.system_reason(parent)}; give the restore a directory "
                              "of its own")
        if parent is None:
            parent = os.path.join(self.ctx.work_dir, "staging")
            if self.ctx.dry_run and not os.path.isdir(parent):
                parent = tempfile.gettempdir()
            else:
                state_mod.secure_dir(self.ctx.work_dir, state_mod.WORK_DIR_MODE)
                state_mod.secure_dir(parent)
        else:
            os.makedirs(parent, 0o700, exist_ok=True)
        self.dir = tempfile.mkdtemp(prefix=f"restore-{time.strftime('%Y%m%d-%H%M%S')}-", dir=parent)
        os.chmod(self.dir, 0o700)
        return self

    def __exit__(self, *exc):
        if self.dir and not self.keep_staging:
            shutil.rmtree(self.dir, ignore_errors=True)
        elif self.dir:
            log.info("staging directory kept: %s", self.dir)

    @property
    def tree(self):
        return self.tree_override or os.path.join(self.dir, "tree")

    def staged(self, path):
        return self.tree + path

    def sanitize(self):
        """The extracted files are untrusted: make them plain cyrus-owned data
        (symlinks, devices, FIFOs and sockets removed and named; no set-id or
        execute bits) while the staging tree is still root's alone."""
        if not os.path.isdir(self.tree):
            return
        uid, gid = self.ctx.cyrus_ids()
        removed = safeio.sanitize_tree(self.tree, uid, gid)
        if removed:
            shown = ", ".join(f"/{p} ({k})" for p, k in removed[:5])
            log.warning("archive %s: left out %d entr%s that are not regular files or directories: %s%s",
                        self.archive, len(removed), "y" if len(removed) == 1 else "ies", shown,
                        " …" if len(removed) > 5 else "")
        return removed

    def extract(self, paths):
        missing = self.repo.extract(self.archive, paths, self.tree)
        self.sanitize()
        return missing

    def load_dump(self):
        from borg_cyrus.restore.dump import Dump
        dump_path = self.ctx.dump_dir
        missing = self.extract([dump_path])
        if missing:
            found = sorted(p for p in self.repo.list_paths(self.archive)
                           if p.endswith("/dump/manifest.json"))
            if not found:
                raise BorgCyrusError(f"archive {self.archive} holds no borg-cyrus dump (looked for {dump_path} "
                                     "and any */dump/manifest.json); was it made with borg-cyrus?")
            dump_path = os.path.dirname(found[0])
            log.info("the archive's dump is at %s (not %s)", dump_path, self.ctx.dump_dir)
            trust.check_archived_path(dump_path, "dump directory", f"archive {self.archive}")
            self.extract([dump_path])
        self.dump_path = dump_path
        self.dump = Dump(self.staged(dump_path), where=f"archive {self.archive}")
        self.conf_values = archived_conf_values(self.dump.path, self.dump.manifest)
        try:
            self.layout = storage.PathLayout.from_manifest(self.dump.manifest, self.conf_values)
        except (ValueError, TypeError, AttributeError) as e:
            raise BorgCyrusError(f"archive {self.archive}: {e}; the dump is too old or damaged") from None
        trust.check_archived_layout(self.layout, f"archive {self.archive}: manifest.json")
        for mb in self.dump.mailboxes:
            if mb.has_spool and mb.partition not in self.layout.partitions:
                raise trust.UntrustedEntry(
                    f"archive {self.archive}: mailbox {mb.intname!r} is on partition {mb.partition!r}, which the "
                    "archived layout does not define; it looks forged or damaged, so nothing was changed")
        return self.dump


# -- restore list -------------------------------------------------------------

def archive_summary(session):
    """A JSON-able description of the archive's users and mailboxes."""
    dump, m = session.dump, session.dump.manifest
    counts = m.get("mailboxes") or {}
    excluded = set(m.get("excluded_mailboxes") or [])
    boxes = []
    for mb in dump.mailboxes:
        if not mb.has_spool:
            continue
        c = counts.get(mb.intname) or {}
        boxes.append({"name": display(mb.intname), "intname": mb.intname, "user": mb.userid,
                      "partition": mb.partition, "layout": "legacy" if mb.legacy else "uuid",
                      "uniqueid": mb.uniqueid, "messages": c.get("messages"), "bytes": c.get("bytes"),
                      "excluded": mb.intname in excluded,
                      "deleted": mb.parts[0] == "DELETED" if mb.parts else False})
    users = {}
    for b in boxes:
        key = b["user"] or ("(deleted)" if b["deleted"] else "(shared)")
        u = users.setdefault(key, {"mailboxes": 0, "messages": 0, "bytes": 0, "uncounted": 0})
        u["mailboxes"] += 1
        if b["messages"] is None:
            u["uncounted"] += 1
        else:
            u["messages"] += b["messages"]
            u["bytes"] += b["bytes"] or 0
    return {"archive": session.archive, "repository": str(session.repo), "created": m.get("created"),
            "hostname": m.get("hostname"), "cyrus_version": m.get("cyrus_version"), "mode": m.get("mode"),
            "counts": m.get("counts"), "consistency": (m.get("consistency") or {}).get("counts"),
            "users": users, "mailboxes": boxes}


def format_list(summary, user=None):
    s = summary
    out = [f"archive {s['archive']} in {s['repository']}",
           f"  made {s.get('created') or '?'} on {s.get('hostname') or '?'}, {s.get('cyrus_version') or 'Cyrus ?'}, "
           f"mode {s.get('mode') or '?'}"]
    boxes = [b for b in s["mailboxes"] if user is None or b["user"] == user]
    users = {k: v for k, v in s["users"].items() if user is None or k == user}
    if user is not None and not boxes:
        raise BorgCyrusError(f"user {user} has no mailboxes in archive {s['archive']}; "
                             "run `borg-cyrus restore list` to see who has")
    tot_m = sum(v["messages"] for v in users.values())
    tot_b = sum(v["bytes"] for v in users.values())
    real_users = [k for k in users if not k.startswith("(")]
    out.append(f"  {len(boxes)} mailboxes, {len(real_users)} users, {tot_m} messages, {human_size(tot_b)}")
    cons = s.get("consistency") or {}
    if any(cons.values()):
        out.append(f"  consistency at backup time: {cons.get('mailboxes_without_directory', 0)} mailbox(es) "
                   f"without a directory, {cons.get('directories_without_mailbox', 0)} directory(ies) without "
                   "a mailbox")
    out.append("")
    w = max([len("USER")] + [len(k) for k in users])
    out.append(f"{'USER':<{w}}  {'MAILBOXES':>9}  {'MESSAGES':>8}  {'SIZE':>10}")
    for k in sorted(users, key=lambda k: (k.startswith("("), k)):
        v = users[k]
        msgs = f"{v['messages']}" + ("+?" if v["uncounted"] else "")
        out.append(f"{k:<{w}}  {v['mailboxes']:>9}  {msgs:>8}  {human_size(v['bytes']):>10}")
    out.append("")
    w = max([len("MAILBOX")] + [len(b["name"]) for b in boxes])
    out.append(f"{'MAILBOX':<{w}}  {'MESSAGES':>8}  {'SIZE':>10}  {'PARTITION':<9}  {'LAYOUT':<6}  NOTE")
    for b in sorted(boxes, key=lambda b: b["name"]):
        note = []
        if b["excluded"]:
            note.append("messages excluded from backups")
        if b["deleted"]:
            note.append("deleted (delayed delete)")
        msgs = "?" if b["messages"] is None else str(b["messages"])
        size = "?" if b["bytes"] is None else human_size(b["bytes"])
        out.append(f"{b['name']:<{w}}  {msgs:>8}  {size:>10}  {b['partition']:<9}  {b['layout']:<6}  "
                   f"{'; '.join(note)}".rstrip())
    return "\n".join(out) + "\n"


# -- planning -----------------------------------------------------------------

@dataclass
class BoxPlan:
    src: mboxlist.Mailbox                 # archived mailbox
    target: str                           # live internal name
    action: str                           # "create" | "merge"
    uniqueid: str = ""                    # create: the uniqueid it gets
    rewrite: bool = False                 # create: new identity -> rewritten header, uuid layout
    partition: str = ""
    live: mboxlist.Mailbox | None = None  # merge: the live mailbox
    live_exists: int = 0
    acl: dict = field(default_factory=dict)
    quotaroot: str | None = None
    excluded: bool = False
    note: str = ""

    def dst_mailbox(self):
        if self.action == "merge":
            return self.live
        mbtype = "e" if self.rewrite else self.src.mbtype
        return mboxlist.Mailbox(self.target, self.uniqueid, self.partition, mbtype, self.acl)


class Conflict(BorgCyrusError):
    pass


class PartialRestore:
    """Shared machinery of `restore user` and `restore mailbox`."""

    def __init__(self, ctx, session, force=False, out=None):
        self.ctx = ctx
        self.out = out
        self.s = session
        self.force = force
        self.alay = session.layout                                   # archived
        self.llay = storage.PathLayout.from_layout(ctx.layout)    # live
        self.uid, self.gid = ctx.cyrus_ids()
        self.steps = []        # what is (or would be) done, in order
        self.report = []
        self.created_dirs = []

    def say(self, msg, *args):
        text = msg % args if args else msg
        self.steps.append(text)
        log.debug("%s", text)
        if self.out:
            self.out(text)

    def tool(self, name, *args, **kw):
        """Run a Cyrus tool (skipped under --dry-run) and record it."""
        shown = " ".join([name, *[a if a and " " not in a else repr(a) for a in map(str, args)]])
        self.say("%s: %s", "would run" if self.ctx.dry_run else "run", shown)
        return self.ctx.cyrus(name, *args, **kw)

    def check_version(self):
        """Raw mailbox files go only onto the Cyrus series that wrote them."""
        from borg_cyrus.restore.dump import check_cyrus_version
        check_cyrus_version(self.ctx, self.s.dump, self.force, f"archive {self.s.archive}")

    def admin(self, intname):
        """A mailbox name as the live server's tools take it."""
        return mboxlist.admin_name(intname, self.ctx.layout.unixhierarchysep)

    # -- live state ----------------------------------------------------------
    def load_live(self):
        r = self.ctx.cyrus("ctl_mboxlist", "-d", changes=False)
        self.live = {mb.intname: mb for mb in mboxlist.iter_dump(r.text.splitlines())}
        self.live_ids = {}
        for mb in self.live.values():
            if mb.has_spool:
                self.live_ids.setdefault(mb.uniqueid, mb)

    def live_box(self, intname):
        mb = self.live.get(intname)
        return mb if mb is not None and mb.has_spool else None

    def live_index(self, mb):
        try:
            return index.read(os.path.join(storage.index_dir(self.llay, mb), "cyrus.index"))
        except (OSError, ValueError, KeyError):
            return None

    def check_partition(self, part, what):
        if part not in self.llay.partitions:
            raise BorgCyrusError(f"{what} is on partition '{part}' in the archive, which this server does not "
                                 f"have; add partition-{part} to {self.ctx.layout.imapd_conf}")

    def plan_box(self, src, target, into):
        """BoxPlan for restoring archived mailbox src as live target."""
        excluded = src.intname in set(self.s.dump.manifest.get("excluded_mailboxes") or [])
        live = self.live_box(target)
        if live is not None:
            ix = self.live_index(live)
            n = ix.exists if ix else 0
            if n and not self.force:
                raise Conflict(f"{display(target)} ({n} message(s))")
            if ix is None:
                raise BorgCyrusError(f"{display(target)} exists but its cyrus.index cannot be read; "
                                     f"run reconstruct on it first")
            return BoxPlan(src, target, "merge", live=live, live_exists=n, partition=live.partition,
                           excluded=excluded)
        plan = BoxPlan(src, target, "create", excluded=excluded)
        if not into and target == src.intname:
            self.check_partition(src.partition, display(src.intname))
            plan.partition = src.partition
            plan.acl = dict(src.acl)
            taken = self.live_ids.get(src.uniqueid)
            dst_dirs = storage.mailbox_dirs(self.llay, src)
            on_disk = [d for d in dst_dirs.values() if occupied(d)]
            if taken is not None or on_disk:
                plan.rewrite = True
                plan.uniqueid = new_uniqueid(self.live_ids)
                plan.note = (f"its uniqueid is still used by {display(taken.intname)}" if taken else
                             f"{on_disk[0]} exists") + "; restored under a new uniqueid"
            else:
                plan.uniqueid = src.uniqueid
            plan.quotaroot = None  # kept from the archived header
        else:
            plan.rewrite = True
            plan.uniqueid = new_uniqueid(self.live_ids)
        return plan

    def plan_all(self, pairs, into):
        """BoxPlans for [(archived mailbox, live target)]; one error naming
        every non-empty mailbox that would be touched without --force."""
        plans, conflicts = [], []
        for src, target in pairs:
            try:
                plans.append(self.plan_box(src, target, into))
            except Conflict as e:
                conflicts.append(str(e))
        if conflicts:
            raise BorgCyrusError(
                f"{len(conflicts)} mailbox(es) exist and are not empty: {', '.join(conflicts[:10])}"
                f"{' …' if len(conflicts) > 10 else ''}; refusing to touch them. Add --force to add the archived "
                "messages they lack (new UIDs, existing mail untouched), or restore into a new folder with --into")
        self.inherit(plans)
        return plans

    def inherit(self, plans):
        """ACL, partition and quota root of rewritten mailboxes, from the
        nearest live ancestor (as Cyrus's CREATE does)."""
        by_target = {p.target: p for p in plans}
        for p in sorted(plans, key=lambda p: p.target.count(".")):
            if not (p.action == "create" and p.rewrite):
                continue
            if p.target == p.src.intname:      # same name, new identity: keep the archived ACL/partition
                continue
            anc = parent_name(p.target)
            while anc:
                if anc in by_target and by_target[anc].action == "create":
                    q = by_target[anc]
                    p.acl, p.partition, p.quotaroot = dict(q.acl), q.partition, q.quotaroot
                    break
                live = self.live_box(anc)
                if live is not None:
                    p.acl, p.partition = dict(live.acl), live.partition
                    try:
                        hdr = header.read(os.path.join(storage.header_dir(self.llay, live), "cyrus.header"))
                        p.quotaroot = hdr.get("Q") or None
                    except (OSError, ValueError, KeyError):
                        p.quotaroot = None
                    break
                anc = parent_name(anc)
            else:
                p.acl = dict(p.src.acl)
                p.partition = self.llay.defaultpartition if self.llay.defaultpartition in self.llay.partitions \
                    else sorted(self.llay.partitions)[0]
            if not p.partition or p.partition not in self.llay.partitions:
                p.partition = self.llay.defaultpartition

    # -- extraction ----------------------------------------------------------
    def box_sources(self, plan):
        """Archived directories of the source mailbox (all kinds)."""
        return storage.mailbox_dirs(self.alay, plan.src)

    def extract(self, paths, required):
        paths = sorted({os.path.normpath(p) for p in paths})
        if self.ctx.dry_run:
            listed = self.s.repo.list_paths(self.s.archive, nest_free(paths))
            missing = {p for p in paths if p not in listed}
            self.say("would extract %d path(s) from archive %s into a private staging directory:",
                     len(paths) - len(missing), self.s.archive)
            for p in paths:
                if p not in missing:
                    self.say("  %s", p)
            for p in sorted(missing):
                self.say("  (not in the archive, skipped: %s)", p)
        else:
            t0 = time.monotonic()
            missing = self.s.extract(paths)
            self.say("extracted %d path(s) from archive %s in %.2f s%s", len(paths) - len(missing), self.s.archive,
                     time.monotonic() - t0, f" ({len(missing)} not in the archive)" if missing else "")
        lost = sorted(set(required) & missing)
        if lost:
            raise BorgCyrusError(f"the archive lacks {lost[0]}" + (f" and {len(lost) - 1} more" if len(lost) > 1
                                                                    else "") +
                                 "; the dump lists the mailbox but its directory was not backed up")
        return missing

    # -- file operations ----------------------------------------------------
    def mkdirs(self, path):
        """Create path and missing parents as cyrus:mail 0755 (not borg's root 0700)."""
        todo = []
        p = path
        while not os.path.isdir(p):
            todo.append(p)
            p = os.path.dirname(p)
        for d in reversed(todo):
            os.mkdir(d, 0o755)
            os.chown(d, self.uid, self.gid)
            self.created_dirs.append(d)

    def chown_tree(self, path):
        for dirpath, dirnames, filenames in os.walk(path):
            os.lchown(dirpath, self.uid, self.gid)
            for n in filenames + [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]:
                os.lchown(os.path.join(dirpath, n), self.uid, self.gid)

    def move(self, src, dst):
        """Move a staged file or tree into place (copy across filesystems)."""
        self.mkdirs(os.path.dirname(dst))
        try:
            os.rename(src, dst)
        except OSError as e:
            if e.errno != errno.EXDEV:
                raise
            if os.path.isdir(src) and not os.path.islink(src):
                shutil.copytree(src, dst, symlinks=True)
            else:
                shutil.copy2(src, dst, follow_symlinks=False)
        if os.path.isdir(dst) and not os.path.islink(dst):
            self.chown_tree(dst)
        else:
            os.lchown(dst, self.uid, self.gid)

    def copy_file(self, src, dst):
        self.mkdirs(os.path.dirname(dst))
        tmp = f"{dst}.borg-cyrus-{os.getpid()}"
        shutil.copy2(src, tmp)
        os.lchown(tmp, self.uid, self.gid)
        os.rename(tmp, dst)

    # -- per plan -------------------------------------------------------------
    def staged_files(self, plan):
        """{filename: staged path} of the source mailbox (message files from the
        data/archive dirs, cyrus.* from wherever they were)."""
        files = {}
        for kind in ("archive", "meta", "data"):   # data wins
            d = self.box_sources(plan).get(kind)
            if d and os.path.isdir(self.s.staged(d)):
                for n in os.listdir(self.s.staged(d)):
                    p = os.path.join(self.s.staged(d), n)
                    if os.path.isfile(p) and not os.path.islink(p):
                        files[n] = p
        return files

    def apply_create_same(self, plan):
        """Put the archived directory back where it was (files only: a legacy
        mailbox's directory also holds its children's directories)."""
        src_dirs = self.box_sources(plan)
        dst_dirs = storage.mailbox_dirs(self.llay, plan.dst_mailbox())
        for kind, src in src_dirs.items():
            staged = self.s.staged(src)
            if not os.path.isdir(staged):
                continue
            dst = dst_dirs.get(kind) or dst_dirs["data"]
            if occupied(dst):
                raise BorgCyrusError(f"{dst} appeared while restoring {display(plan.target)}; nothing overwritten")
            self.mkdirs(dst)
            st = os.stat(staged)
            os.chmod(dst, st.st_mode & 0o7777)
            for entry in os.scandir(staged):
                if entry.is_dir(follow_symlinks=False):
                    continue
                self.move(entry.path, os.path.join(dst, entry.name))
        return os.path.join(storage.header_dir(self.llay, plan.dst_mailbox()), "cyrus.header")

    def apply_create_rewrite(self, plan):
        files = self.staged_files(plan)
        if "cyrus.header" not in files:
            raise BorgCyrusError(f"the archive has no cyrus.header for {display(plan.src.intname)}")
        old = header.read(files["cyrus.header"])
        mb = plan.dst_mailbox()
        data = storage.data_dir(self.llay, mb)
        meta_files = self.llay.metapartition_files if self.llay.metapartitions.get(mb.partition) else ()
        meta = storage.mailbox_dir(self.llay, self.llay.metapartitions[mb.partition], mb) if meta_files else None
        for d in filter(None, (data, meta)):
            if os.path.lexists(d):
                raise BorgCyrusError(f"{d} already exists; cannot create {display(plan.target)} there")
        self.mkdirs(data)
        if meta:
            self.mkdirs(meta)
        for n, p in files.items():
            if n == "cyrus.header":
                continue
            kind = n.split(".", 1)[1] if n.startswith("cyrus.") else None
            where = meta if (meta and kind in meta_files) else data
            self.copy_file(p, os.path.join(where, n))
        quotaroot = plan.quotaroot if plan.target != plan.src.intname else old.get("Q")
        mbtype = (old.get("T") or "e").replace("l", "") or "e"   # the type stays (#sieve is 'f'); uuid layout
        hdr = header.render(mbtype, plan.target, plan.uniqueid, plan.acl, quotaroot, old.get("U") or [])
        hdir = meta if (meta and "header" in meta_files) else data
        path = os.path.join(hdir, "cyrus.header")
        with open(path + ".new", "wb") as f:
            f.write(hdr)
        os.chown(path + ".new", self.uid, self.gid)
        os.rename(path + ".new", path)
        return path

    def apply_merge(self, plan):
        """Copy the archived messages the live mailbox lacks, above its last UID."""
        files = self.staged_files(plan)
        if plan.excluded or "cyrus.index" not in files:
            return 0
        src_ix = index.parse(open(files["cyrus.index"], "rb").read(), files["cyrus.index"])
        live_ix = self.live_index(plan.live)
        have = {r.guid for r in live_ix.live()} if live_ix and live_ix.detailed else set()
        todo = [r for r in src_ix.live() if not (r.guid and r.guid in have) and f"{r.uid}." in files]
        data = storage.data_dir(self.llay, plan.live)
        nxt = (live_ix.last_uid if live_ix else 0) + UID_GAP
        for r in todo:
            nxt += 1
            self.copy_file(files[f"{r.uid}."], os.path.join(data, f"{nxt}."))
        return len(todo)

    def restore_annotations(self, plans):
        """annotations.db entries of created mailboxes (keyed by uniqueid)."""
        batch = self.s.dump.batch(self.alay.annotations[1] or "annotations.db")
        want = {p.src.uniqueid: p.uniqueid for p in plans if p.action == "create" and p.target == p.src.intname}
        if not batch or not want:
            return 0
        with open(batch, "rb") as f:
            records = dbbatch.parse(f.read())
        out = []
        for k, v in records:
            uid = k.split(b"\0", 1)[0].decode("ascii", "replace")
            if uid in want and b"\0" in k:
                out.append((want[uid].encode() + k[len(uid):], v))
        if not out:
            return 0
        backend, path = self.ctx.layout.database("annotations")
        if self.ctx.dry_run:
            self.say("would set %d annotations.db entr%s of the restored mailboxes", len(out),
                     "y" if len(out) == 1 else "ies")
        if not os.path.exists(path) and not self.ctx.dry_run:
            log.warning("%s does not exist; %d annotation(s) not restored", path, len(out))
            return 0
        self.tool("cyr_dbtool", path, backend, "batch", input=dbbatch.load_script(out),
                  what="cyr_dbtool (annotations)")
        return len(out)

    def destinations(self, plans, extras):
        """Every live path the restore writes, checked to lie in this server's
        Cyrus directories (the names they are built from come from the archive)."""
        roots = self.llay.roots() + [self.llay.configdirectory, self.llay.sievedir]
        if self.llay.quota_path:
            roots.append(os.path.dirname(self.llay.quota_path.rstrip("/")) or "/")
        for p in plans:
            for d in storage.mailbox_dirs(self.llay, p.dst_mailbox()).values():
                trust.check_inside(d, roots, f"restoring {display(p.target)}")
        for _src, dst, label, _lo in extras:
            trust.check_inside(dst, roots, f"restoring {label}")

    def apply(self, plans, extras):
        """Do it: place files (as the cyrus user), register, reconstruct. extras:
        [(archived src, live dst, label, replace leftover)] optional per-user files."""
        self.destinations(plans, extras)
        if self.ctx.dry_run:
            headers, merged = self.place(plans, extras)
        else:
            headers, merged = self.place_as_cyrus(plans, extras)
        return self.register(plans, headers, merged)

    def place_as_cyrus(self, plans, extras):
        """place() in a child running as the cyrus user, from the staging tree."""
        fd = os.open(self.s.tree, os.O_RDONLY | os.O_DIRECTORY)

        def work():
            self.s.tree_override = "."
            self.steps = []
            headers, merged = self.place(plans, extras)
            return {"headers": headers, "merged": [p.target for p in merged], "steps": self.steps}
        try:
            res = privdrop.run_as(self.uid, self.gid, work, cwd_fd=fd)
        finally:
            os.close(fd)
        self.steps.extend(res["steps"])
        by_target = {p.target: p for p in plans}
        return res["headers"], [by_target[t] for t in res["merged"]]

    def place(self, plans, extras):
        """Put the staged files into the live spool; returns (headers of created
        mailboxes, merge plans)."""
        headers = []
        merged = []
        for p in sorted(plans, key=lambda p: (p.target.count("."), p.target)):
            if p.action == "create":
                if self.ctx.dry_run:
                    how = (f"under a new uniqueid {p.uniqueid}" + (f" ({p.note})" if p.note else "")) \
                        if p.rewrite else f"uniqueid {p.uniqueid}"
                    src = "" if p.target == p.src.intname else f" from {display(p.src.intname)}"
                    self.say("would create %s%s (%s, partition %s)%s", display(p.target), src, how, p.partition,
                             " empty: its messages were excluded from backups" if p.excluded else "")
                    continue
                hdr = self.apply_create_rewrite(p) if p.rewrite else self.apply_create_same(p)
                headers.append(hdr)
                self.say("placed %s%s", display(p.target), f" ({p.note})" if p.note else "")
            else:
                if self.ctx.dry_run:
                    self.say("would add the archived messages that %s (%d message(s) now) lacks, as new UIDs",
                             display(p.target), p.live_exists)
                    merged.append(p)
                    continue
                n = self.apply_merge(p)
                self.say("added %d archived message(s) to %s", n, display(p.target))
                merged.append(p)
        stamp = time.strftime("%Y%m%d-%H%M%S")
        for src, dst, label, leftover in extras:
            src = self.s.staged(src)
            if os.path.lexists(dst) and not leftover:
                self.say("kept the live %s (%s)", label, dst)
                continue
            if self.ctx.dry_run:
                self.say("would %srestore %s to %s", f"move {dst} aside (created after the user was deleted) and "
                         if os.path.lexists(dst) else "", label, dst)
                continue
            if not os.path.lexists(src):
                continue
            if os.path.lexists(dst):
                aside = f"{dst}.before-restore-{stamp}"
                os.rename(dst, aside)
                self.say("moved %s aside to %s (created after the user was deleted)", dst, aside)
            self.move(src, dst)
            self.say("restored %s", label)
        return headers, merged

    def register(self, plans, headers, merged):
        n = self.restore_annotations(plans)
        if n and not self.ctx.dry_run:
            self.say("restored %d annotations.db entr%s", n, "y" if n == 1 else "ies")
        if self.ctx.dry_run:
            hdrs = []
            for p in sorted(plans, key=lambda p: (p.target.count("."), p.target)):
                if p.action == "create":
                    hdrs.append(os.path.join(storage.header_dir(self.llay, p.dst_mailbox()), "cyrus.header"))
            headers = hdrs
        for i in range(0, len(headers), 200):
            self.tool("reconstruct", "-P", *headers[i:i + 200])
        return headers, merged

    def finish_log(self, t0, what):
        self.say("%s: %s in %.2f s", what, "dry run finished" if self.ctx.dry_run else "done",
                 time.monotonic() - t0)


def occupied(d):
    """A directory that already holds a mailbox's files."""
    return any(os.path.lexists(os.path.join(d, n)) for n in ("cyrus.header", "cyrus.index"))


def _quota_roots(plans):
    roots = set()
    for p in plans:
        root = storage.user_root(mboxlist.Mailbox(p.target, "", ""))
        roots.add(root or p.target)
    return sorted(roots)


class UserRestore(PartialRestore):
    def run(self, userid):
        t0 = time.monotonic()
        trust.check_userid(userid)
        self.check_version()
        self.load_live()
        boxes = [mb for mb in self.s.dump.mailboxes if mb.has_spool and mb.userid == userid]
        if not boxes:
            users = sorted({mb.userid for mb in self.s.dump.mailboxes if mb.userid})
            raise BorgCyrusError(f"user {userid} is not in archive {self.s.archive} (users: "
                                 f"{', '.join(users[:20])}{' …' if len(users) > 20 else ''})")
        inbox = next((mb for mb in boxes if mb.is_inbox), None)
        if inbox is None:
            raise BorgCyrusError(f"archive {self.s.archive} has mailboxes of {userid} but no INBOX; "
                                 "restore them one by one with `restore mailbox`")
        plans = self.plan_all([(mb, mb.intname) for mb in boxes], into=False)
        self.say("restore user %s from archive %s: %d mailbox(es) — %d to create, %d to merge", userid,
                 self.s.archive, len(plans), sum(p.action == "create" for p in plans),
                 sum(p.action == "merge" for p in plans))

        # per-user files: from the archived INBOX's location to the live one's
        inbox_plan = next(p for p in plans if p.src is inbox)
        live_inbox = inbox_plan.dst_mailbox()
        src_user = storage.user_paths(self.alay, userid, inbox)
        dst_user = storage.user_paths(self.llay, userid, live_inbox)
        extras = []
        for kind, label in (("user", "seen/subscription data"), ("sieve", "sieve scripts")):
            srcs, dsts = src_user[kind], dst_user[kind]
            if len(srcs) == len(dsts):
                pairs = list(zip(srcs, dsts))
            elif len(srcs) == 1:           # uuid dir -> legacy files
                pairs = [(os.path.join(srcs[0], f"{os.path.basename(d).rsplit('.', 1)[1]}.db"), d) for d in dsts]
            else:                          # legacy files -> uuid dir
                pairs = [(s, os.path.join(dsts[0], f"{s.rsplit('.', 1)[1]}.db")) for s in srcs]
            # an INBOX that did not exist: per-user files found at its place were
            # made after the deletion (a login, a delivery attempt) and hold nothing
            leftover = inbox_plan.action == "create"
            for s, d in pairs:
                extras.append((s, d, f"{label} {os.path.basename(d)}", leftover))
        qsrc = storage.quota_file(self.alay, storage.user_root(inbox))
        qdst = storage.quota_file(self.llay, storage.user_root(live_inbox))
        if qsrc and qdst:
            extras.append((qsrc, qdst, "quota limits", False))
        elif qsrc or qdst:
            log.warning("quota limits are not restored (quota_db is not quotalegacy); see quota.txt in the dump")

        required = [self.box_sources(p)["data"] for p in plans]
        optional = [d for p in plans for k, d in self.box_sources(p).items() if k != "data"]
        missing = self.extract(required + optional + [x[0] for x in extras], required)
        extras = [(s, d, label, lo) for s, d, label, lo in extras if s not in missing]
        headers, merged = self.apply(plans, extras)
        self.tool("reconstruct", "-r", "-u", "--", userid)
        for p in merged:
            self.tool("reconstruct", "--", self.admin(p.target))
        for root in _quota_roots(plans):
            self.tool("quota", "-f", "--", self.admin(root))
        self.finish_log(t0, f"restore user {userid}")
        return self.steps


class MailboxRestore(PartialRestore):
    def run(self, name, into=None, recursive=False):
        t0 = time.monotonic()
        self.check_version()
        self.load_live()
        by_name = {mb.intname: mb for mb in self.s.dump.mailboxes if mb.has_spool}
        src_name = to_intname(name)
        if src_name not in by_name:
            alt = mboxlist.internal_name(name.strip().strip("/"))
            src_name = alt if alt in by_name else src_name
        if src_name not in by_name:
            close = sorted(n for n in by_name if n.split(".")[:2] == src_name.split(".")[:2])[:10]
            raise BorgCyrusError(f"mailbox {name} is not in archive {self.s.archive}" +
                                 (f"; mailboxes of that owner: {', '.join(display(n) for n in close)}" if close else
                                  "; run `borg-cyrus restore list`"))
        srcs = [by_name[src_name]]
        if recursive:
            srcs += [mb for n, mb in sorted(by_name.items()) if n.startswith(src_name + ".")]
        target_root = to_intname(into) if into else src_name
        if into:
            if target_root == src_name:
                raise ConfigError(f"--into {into} is the mailbox itself; leave out --into to restore in place")
            parent = parent_name(target_root)
            if parent and self.live_box(parent) is None:
                raise BorgCyrusError(f"{display(parent)} does not exist on this server; --into needs an existing "
                                     "parent folder (for a user: restore the user first)")
        else:
            owner = storage.user_root(srcs[0])
            if owner and owner != src_name and self.live_box(owner) is None:
                raise BorgCyrusError(f"{display(owner)} does not exist on this server; restore the user "
                                     f"(`restore user`) or restore into an existing folder with --into")
        plans = self.plan_all([(mb, target_root + mb.intname[len(src_name):]) for mb in srcs], into=bool(into))
        self.say("restore %s%s from archive %s: %d mailbox(es) — %d to create, %d to merge", display(src_name),
                 f" into {display(target_root)}" if into else "", self.s.archive, len(plans),
                 sum(p.action == "create" for p in plans), sum(p.action == "merge" for p in plans))
        required = [self.box_sources(p)["data"] for p in plans]
        optional = [d for p in plans for k, d in self.box_sources(p).items() if k != "data"]
        self.extract(required + optional, required)
        headers, merged = self.apply(plans, [])
        self.tool("reconstruct", "--", *[self.admin(p.target) for p in sorted(plans, key=lambda p: p.target)])
        for root in _quota_roots(plans):
            self.tool("quota", "-f", "--", self.admin(root))
        self.finish_log(t0, f"restore mailbox {display(src_name)}")
        return self.steps


def with_lock(ctx, fn):
    """Run fn holding borg-cyrus's lock (no backup `before` meanwhile); dry runs take no lock."""
    if ctx.dry_run:
        return fn()
    state_mod.secure_dir(ctx.work_dir, state_mod.WORK_DIR_MODE)
    with state_mod.lock(ctx.lock_file):
        return fn()


def summary_json(summary):
    return json.dumps(summary, indent=1, sort_keys=True, ensure_ascii=False)


__all__ = ["ArchiveSession", "UserRestore", "MailboxRestore", "archive_summary", "format_list", "to_intname",
           "display"]
