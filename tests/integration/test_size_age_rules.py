"""exclude.rules on a real Cyrus through borgmatic: a Sent folder holding an
old big, an old small and a new big message (appended over IMAP with
explicit INTERNALDATEs and flags); the rule {user/*/Sent, larger than 1MB,
older than 7d} leaves out exactly the old big one (borg list, manifest),
`doctor` shows it, `verify` passes, and `restore user`, `restore mailbox
--into` and `restore full` bring back the other two with their UIDs, flags,
INTERNALDATE and bytes. A damaged cyrus.index of a matched mailbox: a warning, and every
message stays in the backup."""

import os
import re
import subprocess
import time

import pytest

from support.common import cli
from support.helpers import archive_paths, extract, wipe
from support.restore_helpers import backup, delete_user, restore

pytestmark = [pytest.mark.needs_root, pytest.mark.slow]

USER = "sally"
SENT = f"user/{USER}/Sent"
DAY = 86400
RULE = {"mailboxes": "user/*/Sent", "larger_than": "1MB", "older_than": "7d"}
FETCH = re.compile(rb'UID (\d+).*?INTERNALDATE "([^"]+)".*?RFC822\.SIZE (\d+)')


def message(subject, size):
    head = f"From: sally@example.org\r\nTo: bob@example.org\r\nSubject: {subject}\r\n\r\n".encode()
    line = b"x" * 76 + b"\r\n"
    return head + line * max(1, (size - len(head)) // len(line))


def populate(sb):
    """UID 1 old-big (60 days, 2 MB), 2 old-small (60 days, 1 KB), 3 new-big (now, 2 MB)."""
    c = sb.imap()
    for name in (f"user/{USER}", SENT):
        typ, data = c.create(name)
        assert typ == "OK", data
    c.setacl(SENT, "cyrus", "lrswipkxtecda")
    now = time.time()
    for subject, size, when, flags in (
        ("old-big", 2 << 20, now - 60 * DAY, r"(\Seen)"),
        ("old-small", 1 << 10, now - 60 * DAY, r"(\Seen \Answered $Label1)"),
        ("new-big", 2 << 20, now, r"(\Flagged)"),
    ):
        typ, data = c.append(SENT, flags, when, message(subject, size))
        assert typ == "OK", data
    c.logout()


def served(sb, name=SENT):
    """{uid: (flags, INTERNALDATE, RFC822.SIZE)} of a folder over IMAP."""
    c = sb.imap()
    c.setacl(name, "cyrus", "lrswipkxtecda")
    typ, _ = c.select(name, readonly=True)
    assert typ == "OK"
    typ, data = c.uid("FETCH", "1:*", "(UID FLAGS INTERNALDATE RFC822.SIZE)")
    c.logout()
    out = {}
    for item in data:
        if not item:
            continue
        m = FETCH.search(item)
        flags = sorted(f for f in re.search(rb"FLAGS \(([^)]*)\)", item).group(1).decode().split() if f != "\\Recent")
        out[int(m.group(1))] = (flags, m.group(2).decode(), int(m.group(3)))
    return out


def sent_dir(sb):
    return sb.tool("mbpath", "--", SENT).stdout.decode().strip()


def test_size_age_rule_leaves_out_old_big_messages(sandbox, base_dir):
    sb = sandbox
    populate(sb)
    before = served(sb)
    assert sorted(before) == [1, 2, 3]
    data_dir = sent_dir(sb)
    t0 = time.monotonic()
    b = backup(sb, base_dir, mode="stop-master", exclude={"rules": [RULE]})
    t_backup = time.monotonic() - t0

    # the archive lacks exactly the old big message
    paths = archive_paths(b["repo"])
    assert f"{data_dir}/1." not in paths
    assert {f"{data_dir}/2.", f"{data_dir}/3.", f"{data_dir}/cyrus.index"} <= paths
    sec = b["manifest"]["excluded_messages"]
    (name,) = sec["mailboxes"]
    entry = sec["mailboxes"][name]
    assert (entry["messages"], entry["uids"]) == (1, "1") and entry["bytes"] == before[1][2]
    assert sec["totals"] == {"mailboxes": 1, "messages": 1, "bytes": before[1][2]}
    assert sec["rules"][0]["messages"] == 1 and sec["unreadable"] == []
    assert b["manifest"]["excluded_mailboxes"] == []  # the folder itself is kept

    r = cli("doctor", config=b["bc"])
    assert re.search(
        r"mailboxes user/\*/Sent, larger than 1MB, older than 7d: 1 message\(s\), 2\.0 MiB in 1 ", r.stdout
    ), r.stdout
    assert SENT in r.stdout

    t0 = time.monotonic()
    r = cli("verify", "--borgmatic-config", b["bm"], "--workdir", os.path.join(base_dir, "drill"), config=b["bc"])
    assert r.returncode == 0, r.stdout + r.stderr
    assert "RESULT: OK" in r.stdout and "left out by size/age rules" in r.stdout, r.stdout
    t_verify = time.monotonic() - t0

    want = {uid: v for uid, v in before.items() if uid != 1}

    # one user, deleted and purged, back with what the archive holds
    delete_user(sb, USER)
    t0 = time.monotonic()
    r = restore(b, "user", USER)
    assert "1 message(s) left out by size/age rules in 1 mailbox(es): reconstructed" in r.stdout + r.stderr, (
        r.stdout + r.stderr
    )
    assert served(sb) == want
    t_user = time.monotonic() - t0

    # one folder, next to the live one
    copy = f"user/{USER}/Sent-restored"
    r = restore(b, "mailbox", SENT, "--into", copy)
    assert "1 message(s) left out by size/age rules in 1 mailbox(es): reconstructed" in r.stdout + r.stderr, (
        r.stdout + r.stderr
    )
    # a new uniqueid: the admin's own \Seen (seen.db, per uniqueid) does not follow; the rest does
    unseen = {uid: ([f for f in fl if f != "\\Seen"], d, n) for uid, (fl, d, n) in want.items()}
    assert {uid: ([f for f in fl if f != "\\Seen"], d, n) for uid, (fl, d, n) in served(sb, copy).items()} == unseen

    # the whole server, from scratch
    t0 = time.monotonic()
    wipe(sb)
    subprocess.run(["rm", "-rf", os.path.join(base_dir, "work", "dump")], check=True)
    extract(b["repo"])
    r = cli("restore", "full", config=b["bc"], check=0)
    assert "1 message(s) left out by size/age rules in 1 mailbox(es): reconstructed" in r.stdout + r.stderr, r.stderr
    sb.start()
    assert served(sb) == want
    t_full = time.monotonic() - t0
    print(
        f"\nbackup {t_backup:.1f} s, verify {t_verify:.1f} s, restore user {t_user:.1f} s, restore full {t_full:.1f} s"
    )


def test_damaged_index_keeps_every_message(sandbox, base_dir):
    sb = sandbox
    populate(sb)
    data_dir = sent_dir(sb)
    sb.stop()
    ipath = os.path.join(data_dir, "cyrus.index")
    with open(ipath, "r+b") as f:
        f.truncate(200)  # the header survives, the records do not
    b = backup(
        sb,
        base_dir,
        mode="live",
        exclude={"rules": [RULE]},
        consistency={"unlisted_mailboxes": "warn-in-live"},
    )
    out = b["create"].stdout + b["create"].stderr
    assert "exclude.rules" in out and SENT in out and "stay in the backup" in out, out
    paths = archive_paths(b["repo"])
    assert {f"{data_dir}/1.", f"{data_dir}/2.", f"{data_dir}/3."} <= paths
    sec = b["manifest"]["excluded_messages"]
    assert sec["totals"]["messages"] == 0 and sec["unreadable"] == [SENT]
