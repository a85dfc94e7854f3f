"""Full-server restore: after `borg extract` of an archive, make Cyrus whole.

The archive holds the spools, configdirectory and the dump directory at their
original paths. This gives parents `borg extract` made back their recorded
owner and mode, lets every dumper restore what it dumped (restore_dump hook:
the built-in one rebuilds mailboxes.db and annotations.db from the
binary-safe dumps when they are missing or damaged), re-registers mailboxes created after
the dump (`reconstruct -P`), recovers the databases (`ctl_cyrusdb -r`),
empties the folders whose messages were excluded on purpose (`reconstruct`),
reconstructs those that lost single messages to `exclude.rules`,
recomputes quota usage (`quota -f`) and fixes ownership. Onto a newer
Cyrus, the upgrade steps of restore/upgrade.py run before `quota -f`.
What archives leave out by default and Cyrus derives is rebuilt when
imapd.conf enables it: conversations of users left without
(`ctl_conversationsdb -b`), and, after Cyrus started, the search index
(`squatter -i`, skipped by --no-search-index).
"""

import logging
import os
import stat
import time

from borg_cyrus.cyrus import mboxlist, storage
from borg_cyrus.cyrus.names import display
from borg_cyrus.restore.dump import Dump, check_cyrus_version
from borg_cyrus.restore.upgrade import upgrade_mailboxes
from borg_cyrus.safety import safeio
from borg_cyrus.errors import BorgCyrusError, CommandError
from borg_cyrus.cyrus.service import Service

log = logging.getLogger(__name__)


def _mkdir(path, mode, owner=None):
    """A new directory with mode whatever the umask, owner set through its
    descriptor (never through a link swapped in meanwhile)."""
    os.mkdir(path, mode)
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        if owner:
            os.fchown(fd, *owner)
        os.fchmod(fd, mode)
    finally:
        os.close(fd)


def _int(value, default):
    try:
        return int(value)
    except (TypeError, ValueError):
        return default


def add_parser(rsub):
    rf = rsub.add_parser("full", help="whole server: archive extracted to /, Cyrus stopped")
    rf.add_argument("--dump-dir", help="dump directory (default: <work_directory>/dump)")
    rf.add_argument("--start", action="store_true", help="start Cyrus when done")
    rf.add_argument(
        "--dumps-from",
        metavar="ARCHIVE",
        help="take the databases from this later (database-only) archive: its mailbox list, seen, subscriptions, "
        "ACLs, METADATA; the messages stay those extracted",
    )
    rf.add_argument(
        "--borgmatic-config",
        action="append",
        metavar="FILE",
        help="with --dumps-from: borgmatic configuration to read that archive through",
    )
    rf.add_argument("--repository", help="with --dumps-from: repository path or label")
    rf.add_argument(
        "--force", action="store_true", help="restore raw files even if the archive was made by another Cyrus version"
    )
    rf.add_argument(
        "--no-search-index",
        dest="search_index",
        action="store_false",
        help="leave the search index (search_engine squat or xapian) to a later `squatter -i` or cyrus.conf's "
        "squatter event: on a large server indexing every message takes hours",
    )
    return rf


class FullRestore:
    """newer: the Dump of a later database-only backup (`--dumps-from`): its
    databases replace those of the extracted archive, mailboxes it lists
    that the spool lacks come back empty."""

    def __init__(self, ctx, dump_dir=None, force=False, newer=None):
        self.ctx = ctx
        self.lay = ctx.layout
        self.base = Dump(dump_dir or ctx.dump_dir)
        self.dump = newer or self.base
        self.dump.replace = newer is not None
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
        self.note(
            "gave %s (made by borg extract, root 0700) owner %d:%d and mode %o%s",
            path,
            uid,
            gid,
            mode,
            " as recorded at backup time" if rec else "",
        )

    def check_reachable(self):
        """The cyrus user must be able to enter every parent of Cyrus's dirs."""
        for root in [self.lay.configdirectory] + self.lay.all_partition_dirs():
            blocked = safeio.blocking_parent(os.path.dirname(root), self.uid, self.gid)
            if blocked:
                parent, st = blocked
                raise BorgCyrusError(
                    f"the {self.ctx.config['cyrus_user']} user cannot enter {parent} "
                    f"(mode {st.st_mode & 0o777:o}); run chmod o+x {parent}"
                )

    def ensure_dirs(self):
        lay = self.lay
        dirs = [(lay.configdirectory, 0o750), (os.path.join(lay.configdirectory, "db"), 0o700)]
        dirs += [(lay.runtime_paths[k], 0o700) for k in ("proc_path", "mboxname_lockpath")]
        dirs += [(lay.runtime_paths["socket_dir"], 0o750)]
        dirs += [(p, 0o750) for p in lay.all_partition_dirs()]
        dirs += [(lay.sievedir, 0o750)]
        dirs += [(lay.searchpartitions[k], 0o750) for k in sorted(lay.searchpartitions)]  # left out of archives
        for path, mode in dirs:
            if not os.path.isdir(path):
                self.mkdir(path, mode)

    def mkdir(self, path, mode):
        if self.ctx.dry_run:
            self.note("would create %s", path)
            return
        missing = []  # parents: root's 0755, whatever the umask (the cyrus user must get through)
        parent = os.path.dirname(path)
        while not os.path.isdir(parent):
            missing.append(parent)
            parent = os.path.dirname(parent)
        for p in reversed(missing):
            _mkdir(p, 0o755)
        _mkdir(path, mode, (self.uid, self.gid))
        self.note("created %s", path)

    def check_newer(self):
        """A --dumps-from dump must be newer than the archive extracted in place."""
        if not self.dump.replace:
            return
        new, old = self.dump.manifest.get("created") or "", self.base.manifest.get("created") or ""
        if new <= old and not self.force:
            raise BorgCyrusError(
                f"the dump of --dumps-from (made {new or '?'}) is not newer than the extracted "
                f"archive's (made {old or '?'}); pick a later archive or add --force"
            )
        self.note("databases from the dump made %s; messages from the archive made %s", new, old)

    def create_missing(self):
        """Mailboxes of a newer dump that the spool does not hold (created after
        the spool's backup) come back empty: `reconstruct` makes them."""
        if not self.dump.replace:
            return
        from borg_cyrus.cyrus import storage

        lay = storage.PathLayout.from_layout(self.lay)
        missing = []
        for mb in self.dump.mailboxes:
            try:
                if mb.has_spool and not os.path.isdir(storage.index_dir(lay, mb)):
                    missing.append(mb)
            except KeyError:
                continue
        for i in range(0, len(missing), 200):
            self.ctx.cyrus(
                "reconstruct",
                "--",
                *[mboxlist.admin_name(mb.intname, self.lay.unixhierarchysep) for mb in missing[i : i + 200]],
            )
        if missing:
            shown = ", ".join(display(mb.intname) for mb in missing[:20])
            self.note(
                "%d mailbox(es) created after the archive came back empty: %s%s",
                len(missing),
                shown,
                " …" if len(missing) > 20 else "",
            )

    def register_newer_mailboxes(self):
        """Mailboxes whose directory is in the spool but not in the dump
        (created while a live backup ran): add them from their cyrus.header.
        With a newer dump they were deleted since: named, not registered."""
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
        if headers and self.dump.replace:
            self.note(
                "%d mailbox director(ies) of the archive are not in the newer mailbox list (deleted since); "
                "not registered, e.g. %s",
                len(headers),
                os.path.dirname(headers[0]),
            )
            return
        if headers:
            for i in range(0, len(headers), 500):
                self.ctx.cyrus("reconstruct", "-P", *headers[i : i + 500])
            self.note("registered %d mailbox(es) found in the spool but not in the dump", len(headers))

    def empty_excluded(self):
        names = set(self.dump.manifest.get("excluded_mailboxes") or [])
        boxes = [mb for mb in self.dump.mailboxes if mb.intname in names]
        for i in range(0, len(boxes), 200):
            self.ctx.cyrus(
                "reconstruct",
                "--",
                *[mboxlist.admin_name(mb.intname, self.lay.unixhierarchysep) for mb in boxes[i : i + 200]],
            )
        if boxes:
            self.note("reconstructed %d mailbox(es) whose messages were excluded (now empty)", len(boxes))

    def reconstruct_rule_excluded(self):
        """Mailboxes whose messages `exclude.rules` left out (of the archive whose
        spool was extracted): `reconstruct` drops their records, keeps the
        other messages' UIDs and flags."""
        from borg_cyrus.backup import rules

        left = rules.archived(self.base.manifest, self.base.mailboxes)
        listed = {mb.intname for mb in self.dump.mailboxes if mb.has_spool}  # a newer dump may lack some
        boxes = [mb for mb in self.base.mailboxes if mb.intname in left and mb.intname in listed]
        for i in range(0, len(boxes), 200):
            self.ctx.cyrus(
                "reconstruct",
                "--",
                *[mboxlist.admin_name(mb.intname, self.lay.unixhierarchysep) for mb in boxes[i : i + 200]],
            )
        if boxes:
            self.note("%s", rules.report_line(sum(len(left[mb.intname]) for mb in boxes), len(boxes)))

    def fix_ownership(self):
        fixed = 0
        skipped = []
        for root in [self.lay.configdirectory, self.lay.sievedir] + self.lay.all_partition_dirs():
            if os.path.isdir(root):
                fixed += safeio.chown_tree(root, self.uid, self.gid, dry_run=self.ctx.dry_run, skipped=skipped)
        if fixed:
            self.note(
                "%s ownership of %d entries to %s:%s",
                "would fix" if self.ctx.dry_run else "fixed",
                fixed,
                self.ctx.config["cyrus_user"],
                self.ctx.config["cyrus_group"],
            )
        if skipped:
            log.warning(
                "left the owner of %d hard-linked file(s) of other users alone, e.g. %s", len(skipped), skipped[0]
            )

    def rebuild_conversations(self):
        """Conversations of users whose file is missing (exclude.regenerable: conversations)."""
        if not self.lay.conf.switch("conversations"):
            return
        plan = storage.PathLayout.from_layout(self.lay)
        users = []
        for mb in self.dump.mailboxes:
            if mb.userid and mb.has_spool and storage.user_root(mb) == mb.intname:
                paths = storage.user_paths(plan, mb.userid, mb)["user"]
                conv = [p for p in paths if p.endswith(".conversations")] or [
                    os.path.join(paths[0], "conversations.db")
                ]
                if not os.path.exists(conv[0]):
                    users.append(mb.userid)
        for user in users:
            self.ctx.cyrus("ctl_conversationsdb", "-b", "--", user)
        if users and not self.ctx.dry_run:
            self.note("conversations rebuilt for %d user(s) the archive had none for", len(users))

    def rebuild_search_index(self, started):
        """`squatter -i`: every message not yet in the search index (archives leave it out by default)."""
        engine = self.lay.search_engine()
        if not engine or not self.ctx.tools.has("squatter"):
            return
        t0 = time.monotonic()
        try:
            self.ctx.cyrus("squatter", "-i")
        except CommandError as e:
            raise BorgCyrusError(
                f"the server is restored{' and Cyrus started' if started else ''}, but rebuilding its search index "
                f"failed: {e}; run `squatter -i` again once fixed"
            ) from e
        if not self.ctx.dry_run:
            self.note("search index (%s) brought up to date (squatter -i) in %.1f s", engine, time.monotonic() - t0)

    def run(self, start=False, search_index=True):
        t0 = time.monotonic()
        self.check_stopped()
        upgrade = check_cyrus_version(self.ctx, self.base, self.force, f"the dump in {self.base.path}")
        if self.dump.replace:
            check_cyrus_version(self.ctx, self.dump, self.force, "the dump of --dumps-from")
        self.check_newer()
        self.fix_parents()
        if not self.ctx.dry_run:
            self.check_reachable()
        self.ensure_dirs()
        self.fix_ownership()
        for _plugin, lines in self.ctx.plugins.restore_dump(self.ctx, self.dump):
            for line in lines:
                self.note("%s", line)
        self.ctx.cyrus("ctl_cyrusdb", "-r")
        self.create_missing()
        self.register_newer_mailboxes()
        self.empty_excluded()
        self.reconstruct_rule_excluded()
        if upgrade:
            boxes = self.dump.mailboxes
            users = {mb.userid for mb in boxes if mb.userid}
            for line in upgrade_mailboxes(self.ctx, upgrade, boxes, self.ctx.cyrus, users):
                self.note("%s", line)
        else:
            self.rebuild_conversations()
        self.ctx.cyrus("quota", "-f")
        self.fix_ownership()
        if start:
            Service(self.ctx.config["service"], self.ctx.runner).start()  # logs "Cyrus started in …"
            self.report.append("Cyrus started")
        if search_index:
            self.rebuild_search_index(start)
        self.note(
            "full restore finished in %.2f s (%d mailboxes in the dump)",
            time.monotonic() - t0,
            len(self.dump.mailboxes),
        )
        return self.report
