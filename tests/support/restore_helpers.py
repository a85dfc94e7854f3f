"""Shared by the restore/verify tests: a borgmatic backup of a sandbox, user
deletion with purge, a background LMTP delivery loop, file-tree snapshots."""

import copy
import os
import threading
import time

from borg_cyrus.tools import demo
from borg_cyrus.cyrus import imapview
from support.common import cli, sandbox_config
from support.helpers import borgmatic, borgmatic_config, init_repo, load_manifest

USERS = demo.USERS


def backup(sb, base_dir, mode="live", **bc_extra):
    """borgmatic create through the sample config; returns a dict with the
    borg-cyrus config, the borgmatic config, the repo and the manifest."""
    work = os.path.join(base_dir, "work")
    bc = sandbox_config(sb, base_dir, mode=mode, **bc_extra)
    repo = os.path.join(base_dir, "repo")
    bm = borgmatic_config(base_dir, repo, os.path.join(work, "patterns"))
    init_repo(bm)
    r = borgmatic(bm, "create", bc_config=bc)
    return {"bc": bc, "bm": bm, "repo": repo, "work": work, "manifest": load_manifest(work), "create": r}


def restore(b, *args, check=0):
    """borg-cyrus restore ... against the backup b (as an admin would type it)."""
    return cli("restore", *args, "--borgmatic-config", b["bm"], config=b["bc"], check=check)


def delete_user(sb, user):
    """Delete a user as an admin would, and purge it (cyr_expire -D 0)."""
    a = sb.imap("cyrus")
    a.setacl(f"user/{user}", "cyrus", "lrswipkxtecda")
    typ, data = a.delete(f"user/{user}")
    assert typ == "OK", data
    a.logout()
    sb.tool("cyr_expire", "-D", "0")


def delete_mailbox(sb, name):
    a = sb.imap("cyrus")
    quoted = imapview.quote(name)
    a.setacl(quoted, "cyrus", "lrswipkxtecda")
    typ, data = a.delete(quoted)
    assert typ == "OK", data
    a.logout()
    sb.tool("cyr_expire", "-D", "0")


class Deliveries:
    """Deliver to a user over LMTP every few ms in a background thread."""

    def __init__(self, sb, rcpt, interval=0.005):
        self.sb, self.rcpt, self.interval = sb, rcpt, interval
        self.sent = []
        self.errors = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        i = 0
        while not self._stop.is_set():
            subject = f"during-restore-{i}"
            try:
                self.sb.deliver(self.rcpt, demo.msg(subject, f"delivered while restoring, #{i}"))
                self.sent.append(subject)
            except Exception as e:  # keep going; the test fails on errors
                self.errors.append(repr(e))
            i += 1
            time.sleep(self.interval)

    def __enter__(self):
        self._thread.start()
        while not self.sent and not self.errors:
            time.sleep(0.01)
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(10)


def subjects(sb, user, mailbox="INBOX"):
    conn = sb.imap(user)
    try:
        conn.select(imapview.quote(mailbox), readonly=True)
        typ, data = conn.uid("FETCH", "1:*", "(BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
        out = []
        for item in data or []:
            if isinstance(item, tuple):
                out.append(item[1].decode().split(":", 1)[1].strip())
        return out
    finally:
        conn.logout()


def without_new_mail(after, before, user, mailbox="INBOX"):
    """after with the messages delivered since `before` removed from one mailbox."""
    out = copy.deepcopy(after)
    box_a = out[user]["mailboxes"][mailbox]
    box_b = before[user]["mailboxes"][mailbox]
    keep = {str(u) for u in box_b["messages"]}
    box_a["messages"] = {u: m for u, m in box_a["messages"].items() if str(u) in keep}
    box_a["uidnext"] = box_b["uidnext"]
    return out


def tree(path, skip=("run", "master.log", "conf/db.backup1", "conf/db.backup2", "conf/db")):
    """{relative path: (mode, uid, gid, size, mtime_ns, link)} of everything below path
    (minus runtime files and the periodic checkpoint's database copies)."""

    def skipped(rel):
        return any(rel == s or rel.startswith(s + "/") for s in skip)

    out = {}
    for dirpath, dirnames, filenames in os.walk(path):
        dirnames[:] = [d for d in dirnames if not skipped(os.path.relpath(os.path.join(dirpath, d), path))]
        for n in dirnames + filenames:
            p = os.path.join(dirpath, n)
            rel = os.path.relpath(p, path)
            if skipped(rel):
                continue
            st = os.lstat(p)
            isdir = os.path.isdir(p) and not os.path.islink(p)
            out[rel] = (
                st.st_mode,
                st.st_uid,
                st.st_gid,
                0 if isdir else st.st_size,
                0 if isdir else st.st_mtime_ns,
                os.readlink(p) if os.path.islink(p) else None,
            )
    return out


def _boxes_by_name(sb):
    """{intname: Mailbox} of a running sandbox (from ctl_mboxlist -d)."""
    from borg_cyrus.cyrus.mboxlist import iter_dump

    return {
        mb.intname: mb for mb in iter_dump(sb.tool("ctl_mboxlist", "-d").stdout.decode().splitlines()) if mb.has_spool
    }
