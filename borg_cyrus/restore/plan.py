"""Partial restores into a LIVE Cyrus (one user, one mailbox): the plan.

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

import logging
import os
import time
from dataclasses import dataclass, field

from borg_cyrus.cyrus import header, index, mboxlist, storage
from borg_cyrus.cyrus.names import display, new_uniqueid, parent_name
from borg_cyrus.errors import BorgCyrusError
from borg_cyrus.model import nest_free
from borg_cyrus.restore.place import Placement, occupied
from borg_cyrus.safety import trust

log = logging.getLogger(__name__)


# -- planning -----------------------------------------------------------------


@dataclass
class BoxPlan:
    src: mboxlist.Mailbox  # archived mailbox
    target: str  # live internal name
    action: str  # "create" | "merge"
    uniqueid: str = ""  # create: the uniqueid it gets
    rewrite: bool = False  # create: new identity -> rewritten header, uuid layout
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


class PartialRestore(Placement):
    """Shared machinery of `restore user` and `restore mailbox`."""

    def __init__(self, ctx, session, force=False, out=None):
        self.ctx = ctx
        self.out = out
        self.s = session
        self.force = force
        self.alay = session.layout  # archived
        self.llay = storage.PathLayout.from_layout(ctx.layout)  # live
        self.uid, self.gid = ctx.cyrus_ids()
        self.steps = []  # what is (or would be) done, in order
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

        self.upgrade = check_cyrus_version(self.ctx, self.s.dump, self.force, f"archive {self.s.archive}")

    def after_placed(self, plans):
        """What every partial restore does once its mailboxes are in place and
        reconstructed: the size/age-rule report, the index upgrade onto a newer
        Cyrus, the derived indexes, quota."""
        from borg_cyrus.backup import rules

        line = rules.restored_line(
            self.s.dump.manifest, self.s.dump.mailboxes, [p.src for p in plans], self.ctx.dry_run
        )
        if line:
            self.say("%s", line)
        self.upgrade_restored(plans)
        self.derived(plans)
        for root in quota_roots(plans):
            self.tool("quota", "-f", "--", self.admin(root))

    def derived(self, plans):
        """What Cyrus derives from the restored mailboxes, rebuilt when imapd.conf enables it:
        the search index (squatter) and the owners' conversations (ctl_conversationsdb -b)."""
        users = sorted({p.dst_mailbox().userid for p in plans if p.dst_mailbox().userid})
        self.derived_for([self.admin(p.target) for p in plans], users)

    def derived_for(self, names, users):
        """derived() of these mailboxes (admin names) and owners."""
        conf = self.ctx.layout.conf
        if conf.switch("conversations"):  # first: the Xapian index refers to them
            for user in users:
                self.tool("ctl_conversationsdb", "-b", "--", user)
            if users:
                self.say("conversations rebuilt for %s", ", ".join(users))
        engine = self.ctx.layout.search_engine()
        if names and engine and self.ctx.tools.has("squatter"):
            self.tool("squatter", "--", *names)
            self.say("search index (%s) rebuilt for %d restored mailbox(es)", engine, len(names))

    def upgrade_restored(self, plans):
        """Onto a newer Cyrus: the restored mailboxes' indexes upgraded (restore/upgrade.py)."""
        if not getattr(self, "upgrade", None):
            return
        from borg_cyrus.restore.upgrade import upgrade_mailboxes

        boxes = [p.dst_mailbox() for p in plans]
        users = {mb.userid for mb in boxes if mb.userid}
        for line in upgrade_mailboxes(self.ctx, self.upgrade, boxes, self.tool, users):
            self.say("%s", line)

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
            raise BorgCyrusError(
                f"{what} is on partition '{part}' in the archive, which this server does not "
                f"have; add partition-{part} to {self.ctx.layout.imapd_conf}"
            )

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
                raise BorgCyrusError(
                    f"{display(target)} exists but its cyrus.index cannot be read; run reconstruct on it first"
                )
            return BoxPlan(src, target, "merge", live=live, live_exists=n, partition=live.partition, excluded=excluded)
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
                plan.note = (
                    f"its uniqueid is still used by {display(taken.intname)}" if taken else f"{on_disk[0]} exists"
                ) + "; restored under a new uniqueid"
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
                "messages they lack (new UIDs, existing mail untouched), or restore into a new folder with --into"
            )
        self.inherit(plans)
        return plans

    def inherit(self, plans):
        """ACL, partition and quota root of rewritten mailboxes, from the
        nearest live ancestor (as Cyrus's CREATE does)."""
        by_target = {p.target: p for p in plans}
        for p in sorted(plans, key=lambda p: p.target.count(".")):
            if not (p.action == "create" and p.rewrite):
                continue
            if p.target == p.src.intname:  # same name, new identity: keep the archived ACL/partition
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
                p.partition = (
                    self.llay.defaultpartition
                    if self.llay.defaultpartition in self.llay.partitions
                    else sorted(self.llay.partitions)[0]
                )
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
            self.say(
                "would extract %d path(s) from archive %s into a private staging directory:",
                len(paths) - len(missing),
                self.s.archive,
            )
            for p in paths:
                if p not in missing:
                    self.say("  %s", p)
            for p in sorted(missing):
                self.say("  (not in the archive, skipped: %s)", p)
        else:
            t0 = time.monotonic()
            missing = self.s.extract(paths)
            self.s.finish_reading()
            self.say(
                "extracted %d path(s) from archive %s in %.2f s%s",
                len(paths) - len(missing),
                self.s.archive,
                time.monotonic() - t0,
                f" ({len(missing)} not in the archive)" if missing else "",
            )
        lost = sorted(set(required) & missing)
        if lost:
            raise BorgCyrusError(
                f"the archive lacks {lost[0]}"
                + (f" and {len(lost) - 1} more" if len(lost) > 1 else "")
                + "; the dump lists the mailbox but its directory was not backed up"
            )
        return missing

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


def quota_roots(plans):
    roots = set()
    for p in plans:
        root = storage.user_root(mboxlist.Mailbox(p.target, "", ""))
        roots.add(root or p.target)
    return sorted(roots)
