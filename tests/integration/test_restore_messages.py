"""`restore messages` (real Cyrus, borg, borgmatic): three nightly archives
with mail arriving and being deleted between them; messages back by date
range, subject, "expunged since" (expunge_mode delayed and immediate) and
--at, into Restored/... folders: bytes, flags and INTERNALDATE as archived,
no message twice, every other mailbox untouched; with search_engine: squat
the restored messages are indexed (cyrus.squat) and found by SEARCH TEXT,
with xapian (and conversations) they are in the owner's Xapian index. Then
that server lost whole: `restore full --start` rebuilds the conversations
and the Xapian index the archive left out, and when squatter fails for real
it says the server is restored and running, and exits non-zero."""

import datetime
import glob
import hashlib
import imaplib
import json
import os
import re
import shutil
import subprocess
import time

import pytest

from borg_cyrus.cyrus.sandbox import Sandbox
from borg_cyrus.restore.when import archive_time
from borg_cyrus.tools.demo import populate
from support.common import cli, env
from support.helpers import borgmatic, extract, snapshot, wipe
from support.restore_helpers import backup, restore

pytestmark = [pytest.mark.needs_root, pytest.mark.slow]

DAYS = [datetime.datetime(2026, 11, d, 9, 30, tzinfo=datetime.UTC) for d in (20, 21, 22, 23, 24, 25)]


def message(i):
    return (
        f"From: Carol Sender <carol@example.org>\r\nTo: alice@example.org\r\nSubject: report {i} =?utf-8?q?=C3=9Cbersicht?=\r\n"
        f"Date: {DAYS[i - 1]:%a, %d %b %Y %H:%M:%S +0000}\r\nMessage-ID: <r{i}@example.org>\r\n"
        "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"
        f"quarterly figures, part {i}, zebracorn{i}\r\n"
    ).encode()


def folder(conn, name):
    """{uid: (sha256, flags, internaldate)} of a folder as alice sees it."""
    typ, _ = conn.select(f'"{name}"', readonly=True)
    assert typ == "OK", name
    typ, data = conn.uid("FETCH", "1:*", "(UID FLAGS INTERNALDATE BODY.PEEK[])")
    out = {}
    for item in data:
        if not isinstance(item, tuple):
            continue
        meta = item[0].decode()
        uid = int(re.search(r"UID (\d+)", meta).group(1))
        # \Recent is the session's, not the message's
        flags = tuple(sorted(f for f in re.search(r"FLAGS \(([^)]*)\)", meta).group(1).split() if f != "\\Recent"))
        date = re.search(r'INTERNALDATE "([^"]+)"', meta).group(1)
        out[uid] = (hashlib.sha256(item[1]).hexdigest(), flags, date)
    return out


def expunge(sb, uids):
    a = sb.imap("alice")
    a.select('"INBOX/Reports"')
    a.uid("STORE", ",".join(map(str, uids)), "+FLAGS", "(\\Deleted)")
    a.expunge()
    a.logout()


def without_alice(snap):
    """Every other user's view and quota (alice's own usage grows by what comes back)."""
    out = {u: v for u, v in snap.items() if u != "alice"}
    out["#quota"] = {k: v for k, v in snap["#quota"].items() if k != "user/alice"}
    return out


def archive_times(repo):
    out = subprocess.run(["borg", "list", "--json", repo], capture_output=True, text=True, check=True, env=env())
    return [(a["name"], archive_time(a)) for a in json.loads(out.stdout)["archives"]]


def xapian_conf(base_dir):
    """search_engine xapian (Debian builds Cyrus with it), which needs conversations and a search tier."""
    tier = os.path.join(base_dir, "cyrus", "search")  # one per mail partition
    return {"search_engine": "xapian", "conversations": "yes", "defaultsearchtier": "t1",
            "t1searchpartition-default": tier, "t1searchpartition-second": tier + "-second"}  # fmt: skip


def xapian_indexed(sb, conn, folder):
    """The UIDs of folder that alice's Xapian index went through (expunged ones too): cyrus.indexed.db in
    the directory named by her INBOX's MAILBOXID maps "*M*<mailboxid>*" to "<version> <uid set>"."""

    def mailboxid(name):
        typ, data = conn.status(f'"{name}"', "(MAILBOXID)")
        return re.search(rb"MAILBOXID \(([^)]+)\)", data[0]).group(1)

    inbox = mailboxid("INBOX").decode()
    tier = sb.extra_conf["t1searchpartition-default"]
    dbs = glob.glob(os.path.join(tier, "**", inbox, "xapian", "cyrus.indexed.db"), recursive=True)
    assert len(dbs) == 1, dbs
    want = b"*M*" + mailboxid(folder) + b"*"
    for line in sb.tool("cyr_dbtool", dbs[0], "twoskip", "show").stdout.splitlines():
        key, _, value = line.partition(b"\t")
        if key == want:
            uids = set()
            for part in value.split()[1].decode().split(","):
                lo, _, hi = part.partition(":")
                uids.update(range(int(lo), int(hi or lo) + 1))
            return uids
    return set()


@pytest.mark.parametrize("mode", ["delayed", "immediate"])
def test_restore_messages(base_dir, mode):
    # delayed expunge with squat; immediate with xapian (and the conversations it needs)
    conf = {"expunge_mode": mode} | ({"search_engine": "squat"} if mode == "delayed" else xapian_conf(base_dir))
    sb = Sandbox(os.path.join(base_dir, "cyrus"), partitions=("default", "second"), extra_conf=conf).create()
    for tier in [v for k, v in conf.items() if "searchpartition-" in k]:
        os.mkdir(tier, 0o750)
        os.chown(tier, sb.uid, sb.gid)
    sb.start()
    try:
        populate(sb)
        a = sb.imap("alice")
        assert a.create('"INBOX/Reports"')[0] == "OK"
        for i in range(1, 7):
            flags = "(\\Flagged $Work)" if i % 2 else "(\\Seen)"
            typ, _ = a.append('"INBOX/Reports"', flags, imaplib.Time2Internaldate(DAYS[i - 1].timestamp()), message(i))
            assert typ == "OK"
        archived = folder(a, "INBOX/Reports")
        a.logout()
        # with xapian, conversations are left out too: restore full must rebuild both
        leave_out = {
            "exclude": {"regenerable": ["duplicate-db", "cache-dbs", "search-indexes", "runtime", "conversations"]}
        }
        b = backup(sb, base_dir, mode="stop-master", **(leave_out if mode == "immediate" else {}))
        expunge(sb, [2, 3])
        sb.deliver("alice", "Subject: between the nights\r\n\r\nnew\r\n")
        borgmatic(b["bm"], "create", bc_config=b["bc"])
        expunge(sb, [4])
        time.sleep(1)
        borgmatic(b["bm"], "create", bc_config=b["bc"])
        (n1, t1), (n2, t2), (n3, t3) = archive_times(b["repo"])
        others = without_alice(snapshot(sb))
        day1 = b["manifest"]["created"][:10]
        iso = "%Y-%m-%dT%H:%M:%S.%f"

        # -n: the list, nothing made
        r = cli("-n", "restore", "messages", "user/alice/Reports", "--at", t1.strftime(iso), "--since", "2026-11-21",
                "--before", "2026-11-23", "--borgmatic-config", b["bm"], config=b["bc"], check=0)  # fmt: skip
        assert "2 chosen" in r.stdout and re.search(r"UID 2 .* report 2 Übersicht", r.stdout), r.stdout
        al = sb.imap("alice")
        assert al.select(f'"INBOX/Restored/{day1}/Reports"')[0] == "NO"
        al.logout()

        # by date range, from the first night: into INBOX/Restored/<day>/Reports
        r = restore(b, "messages", "user/alice/Reports", "--at", t1.strftime(iso), "--since", "2026-11-21",
                    "--before", "2026-11-23")  # fmt: skip
        assert f"from archive {n1}" in r.stdout and "2 chosen" in r.stdout, r.stdout
        al = sb.imap("alice")
        got = folder(al, f"INBOX/Restored/{day1}/Reports")
        assert got == {u: archived[u] for u in (2, 3)}, (got, archived)
        # by subject, from the second night, into a folder named; one already back is not restored twice
        r = restore(b, "messages", "user/alice/Reports", "--at", t2.strftime(iso), "--subject", "report 4",
                    "--into", "user/alice/Four")  # fmt: skip
        assert "1 chosen" in r.stdout, r.stdout
        assert folder(al, "INBOX/Four") == {4: archived[4]}
        r = restore(b, "messages", "user/alice/Reports", "--at", t1.strftime(iso), "--into", "user/alice/All")
        assert "3 chosen" in r.stdout and "3 already in the live folder" in r.stdout, r.stdout
        assert folder(al, "INBOX/All") == {u: archived[u] for u in (2, 3, 4)}
        # --expunged from the newest archive: under delayed expunge its index still holds 2, 3 and 4
        r = restore(b, "messages", "user/alice/Reports", "--expunged", "--into", "user/alice/Expunged")
        if mode == "delayed":
            assert "3 chosen (3 expunged in the archive)" in r.stdout, r.stdout
            assert folder(al, "INBOX/Expunged") == {u: archived[u] for u in (2, 3, 4)}
        else:
            assert "nothing to restore" in r.stdout, r.stdout
            r = restore(b, "messages", "user/alice/Reports", "--expunged", "--at", t1.strftime(iso),
                        "--into", "user/alice/Expunged")  # fmt: skip
            assert "3 chosen (0 expunged in the archive)" in r.stdout, r.stdout
            assert folder(al, "INBOX/Expunged") == {u: archived[u] for u in (2, 3, 4)}
        # the live folder itself is untouched: 1, 5, 6 as before
        assert folder(al, "INBOX/Reports") == {u: archived[u] for u in (1, 5, 6)}
        if mode == "delayed":  # search_engine: squat: indexed right after the restore
            assert "search index (squat) rebuilt" in r.stdout, r.stdout
            al.select(f'"INBOX/Restored/{day1}/Reports"', readonly=True)
            typ, data = al.uid("SEARCH", "TEXT", "zebracorn3")
            assert data[0].split() == [b"3"], data
            squat = glob.glob(os.path.join(sb.partitions["default"], "**", "cyrus.squat"), recursive=True)
            assert len(squat) >= 4, squat  # squatter ran on every restored folder (SEARCH alone would scan)
        else:  # xapian: the restored folders' messages are in alice's index, conversations rebuilt first
            assert "search index (xapian) rebuilt for 1 restored mailbox(es)" in r.stdout, r.stdout
            assert "conversations rebuilt for alice" in r.stdout, r.stdout
            assert {2, 3} <= xapian_indexed(sb, al, f"INBOX/Restored/{day1}/Reports")
            assert {2, 3, 4} <= xapian_indexed(sb, al, "INBOX/Expunged")
            al.select('"INBOX/Expunged"', readonly=True)
            assert al.uid("SEARCH", "TEXT", "zebracorn3")[1][0].split() == [b"3"]
        al.logout()
        assert without_alice(snapshot(sb)) == others
        # find across the three archives: index files first, message files of the candidates only
        r = restore(b, "find", "--user", "alice", "--subject", "report 2")
        assert "1 message(s) of alice in 3 archive(s)" in r.stdout, r.stdout
        assert (
            f"in {n1}; back with: borg-cyrus restore messages 'user/alice/Reports' --archive {n1} --uid 2" in r.stdout
        )
        data = json.loads(restore(b, "find", "--user", "alice", "--mailbox", "user/alice/Reports", "--since",
                                  "2026-11-24", "--json").stdout)  # fmt: skip
        assert [(m["uid"], m["first"], m["last"]) for m in data["messages"]] == [(5, n1, n3), (6, n1, n3)], data
        assert restore(b, "find", "--user", "alice", "--subject", "no such words", check=1).stdout.startswith("0 ")
        # bad input: one line, nothing changed
        r = restore(b, "messages", "user/alice/Reports", "--uid", "x:y", check=2)
        assert "--uid 'x:y'" in r.stderr
        r = restore(b, "messages", "user/alice/Reports", "--into", "user/alice/All", check=1)
        assert "exists" in r.stderr
        if mode == "immediate":
            full_restore_rebuilds_xapian(sb, b)
    finally:
        sb.stop()


def full_restore_rebuilds_xapian(sb, b):
    """The server lost whole and restored from the last night: neither its
    Xapian index nor conversations were archived; restore full --start
    rebuilds both, the index once Cyrus serves mail again."""
    wipe(sb)
    assert not os.path.exists(sb.extra_conf["t1searchpartition-default"])
    extract(b["repo"])
    r = cli("-n", "restore", "full", "--start", config=b["bc"], check=0)
    assert re.search(r"would run \S*/squatter -C \S+ -i\n", r.stderr), r.stderr
    assert re.search(r"would run \S*/ctl_conversationsdb -C \S+ -b -- alice\n", r.stderr), r.stderr
    r = cli("-n", "restore", "full", "--start", "--no-search-index", config=b["bc"], check=0)
    assert "squatter" not in r.stderr and "ctl_conversationsdb" in r.stderr, r.stderr
    r = cli("restore", "full", "--start", config=b["bc"], check=0)
    assert re.search(r"conversations rebuilt for [1-9]\d* user\(s\) the archive had none for", r.stderr), r.stderr
    assert "search index (xapian) brought up to date (squatter -i)" in r.stderr, r.stderr
    al = sb.imap("alice")
    assert {1, 5, 6} <= xapian_indexed(sb, al, "INBOX/Reports")
    al.select('"INBOX/Reports"', readonly=True)
    assert al.uid("SEARCH", "TEXT", "zebracorn5")[1][0].split() == [b"5"]
    al.logout()

    # squatter failing for real (imapd.conf lost the second partition's search tier): one line saying the
    # server is restored and running, a non-zero exit, Cyrus left running
    sb.stop()
    shutil.rmtree(sb.extra_conf["t1searchpartition-default"])
    with open(sb.imapd_conf) as f:
        lines = [line for line in f if not line.startswith("t1searchpartition-second")]
    with open(sb.imapd_conf, "w") as f:
        f.writelines(lines)
    r = cli("restore", "full", "--start", config=b["bc"], check=1)
    assert "error: the server is restored and Cyrus started, but rebuilding its search index failed: squatter" in (
        r.stderr
    ), r.stderr
    assert "run `squatter -i` again once fixed" in r.stderr and sb.running()
    sb.imap("alice").logout()
