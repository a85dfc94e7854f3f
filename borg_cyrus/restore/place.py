"""Putting staged files into the live spool, as the cyrus user (a forked
child that dropped to cyrus:mail, safety/privdrop.py), then registering
the mailboxes with Cyrus's tools (parent, as root: the tools drop to cyrus
themselves). First the staged indexes are checked against the staged
message files (vet_staged): a message whose record no Cyrus writes, or
whose file has another size than its record, is left out with one line."""

import errno
import logging
import os
import shutil
import time

from borg_cyrus.cyrus import dbbatch, header, imapadmin, index, storage
from borg_cyrus.cyrus.names import display
from borg_cyrus.errors import BorgCyrusError
from borg_cyrus.safety import privdrop
from borg_cyrus.tools import progress

log = logging.getLogger(__name__)

UID_GAP = 1000  # merged messages start this far above the live last UID (LMTP keeps delivering)


class Placement:
    """File placement of a PartialRestore (mixin: needs ctx, s, llay, alay, uid, gid, say, tool)."""

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
        for kind in ("archive", "meta", "data"):  # data wins
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
        mbtype = (old.get("T") or "e").replace("l", "") or "e"  # the type stays (#sieve is 'f'); uuid layout
        hdr = header.render(mbtype, plan.target, plan.uniqueid, plan.acl, quotaroot, old.get("U") or [])
        hdir = meta if (meta and "header" in meta_files) else data
        path = os.path.join(hdir, "cyrus.header")
        with open(path + ".new", "wb") as f:
            f.write(hdr)
        os.chown(path + ".new", self.uid, self.gid)
        os.rename(path + ".new", path)
        return path

    def apply_merge(self, plan):
        """Copy the archived messages the live mailbox lacks (by content: imapadmin.content_keys), above its
        last UID."""
        files = self.staged_files(plan)
        if plan.excluded or "cyrus.index" not in files:
            return 0
        src_ix = index.parse(open(files["cyrus.index"], "rb").read(), files["cyrus.index"])
        live_ix = self.live_index(plan.live)
        have = {r.guid for r in live_ix.live()} if live_ix and live_ix.detailed else set()
        todo = [r for r in src_ix.live() if not (r.guid and r.guid in have) and f"{r.uid}." in files]
        if have:  # also in another form (restore messages --in-place made its line ends CRLF, say)
            todo = [r for r in todo if not imapadmin.content_keys(_read(files[f"{r.uid}."])) & have]
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
                out.append((want[uid].encode() + k[len(uid) :], v))
        if not out:
            return 0
        backend, path = self.ctx.layout.database("annotations")
        if self.ctx.dry_run:
            self.say(
                "would set %d annotations.db entr%s of the restored mailboxes",
                len(out),
                "y" if len(out) == 1 else "ies",
            )
        if not os.path.exists(path) and not self.ctx.dry_run:
            log.warning("%s does not exist; %d annotation(s) not restored", path, len(out))
            return 0
        self.tool("cyr_dbtool", path, backend, "batch", input=dbbatch.load_script(out), what="cyr_dbtool (annotations)")
        return len(out)

    def skip_record(self, intname, uid, why):
        """One line: a message of the archive left out because its index record is forged or damaged."""
        log.warning("archive %s: %s UID %d: %s; left out (its index record is forged or damaged)",
                    self.s.archive, display(intname), uid, why)  # fmt: skip

    def vet_staged(self, plans):
        """Leave out the staged message files whose index records no Cyrus writes (index.vet) or whose
        size is not their record's, and mark those records expunged and unlinked in the staged index, so
        that neither the placing nor reconstruct (which takes a file as it finds it) ever sees them.
        Sizes come from lstat: nothing of a file is read. Returns {target: [UIDs left out]}."""
        out = {}
        gone = index.FLAG_EXPUNGED | index.FLAG_UNLINKED
        for plan in plans:
            files = self.staged_files(plan)
            if "cyrus.index" not in files:
                continue
            try:
                ix = index.read(files["cyrus.index"])
            except (OSError, ValueError):
                continue  # reconstruct rebuilds an index it cannot read either
            if not ix.detailed:
                continue  # a version whose records are not interpreted here: reconstruct's alone
            records, bad = index.vet(r for r in ix.records if not index.unlinked(r))
            drop = {uid for uid, _why in bad}
            for uid, why in bad:
                self.skip_record(plan.src.intname, uid, why)
            for r in records:
                p = files.get(f"{r.uid}.")
                why = index.file_problem(r, os.lstat(p).st_size) if p else None
                if why:
                    self.skip_record(plan.src.intname, r.uid, why)
                    drop.add(r.uid)
            if not drop:
                continue
            for uid in drop:
                if f"{uid}." in files:
                    os.unlink(files[f"{uid}."])
            index.rewrite_flags(files["cyrus.index"], lambda uid, fl, d=drop: fl | gone if uid in d else fl)
            out[plan.target] = sorted(drop)
        return out

    def apply(self, plans, extras):
        """Do it: place files (as the cyrus user), register, reconstruct. extras:
        [(archived src, live dst, label, replace leftover)] optional per-user files."""
        self.destinations(plans, extras)
        self.vet_staged(plans)
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
        ordered = sorted(plans, key=lambda p: (p.target.count("."), p.target))
        for p in ordered if self.ctx.dry_run else progress.each("restore: place", ordered, "mailboxes"):
            if p.action == "create":
                if self.ctx.dry_run:
                    how = (
                        (f"under a new uniqueid {p.uniqueid}" + (f" ({p.note})" if p.note else ""))
                        if p.rewrite
                        else f"uniqueid {p.uniqueid}"
                    )
                    src = "" if p.target == p.src.intname else f" from {display(p.src.intname)}"
                    self.say(
                        "would create %s%s (%s, partition %s)%s",
                        display(p.target),
                        src,
                        how,
                        p.partition,
                        " empty: its messages were excluded from backups" if p.excluded else "",
                    )
                    continue
                hdr = self.apply_create_rewrite(p) if p.rewrite else self.apply_create_same(p)
                headers.append(hdr)
                self.say("placed %s%s", display(p.target), f" ({p.note})" if p.note else "")
            else:
                if self.ctx.dry_run:
                    self.say(
                        "would add the archived messages that %s (%d message(s) now) lacks, as new UIDs",
                        display(p.target),
                        p.live_exists,
                    )
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
                self.say(
                    "would %srestore %s to %s",
                    f"move {dst} aside (created after the user was deleted) and " if os.path.lexists(dst) else "",
                    label,
                    dst,
                )
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
            self.tool("reconstruct", "-P", *headers[i : i + 200])
        return headers, merged

    def finish_log(self, t0, what):
        self.say("%s: %s in %.2f s", what, "dry run finished" if self.ctx.dry_run else "done", time.monotonic() - t0)


def _read(path):
    with open(path, "rb") as f:
        return f.read()


def occupied(d):
    """A directory that already holds a mailbox's files."""
    return any(os.path.lexists(os.path.join(d, n)) for n in ("cyrus.header", "cyrus.index"))
