"""`borg-cyrus restore user|list` and --dry-run with real Cyrus 3.6, borg 1.4 and
borgmatic 2.1: a deleted and purged user comes back into the running server
while mail keeps flowing to others."""

import json
import os
import re

import pytest

from borg_cyrus.cyrus import imapview
from borg_cyrus.backup.excludes import iter_json_objects
from borg_cyrus.cyrus.mboxlist import iter_dump
from support.common import cli, index_version
from support.helpers import expected, snapshot
from support.restore_helpers import Deliveries, backup, delete_user, restore, subjects, tree, without_new_mail

pytestmark = pytest.mark.slow


def _user_sieve(sb, user):
    """Put a sieve script where Cyrus keeps the user's scripts (uuid layout)."""
    (ans,) = iter_json_objects(sb.tool("mbpath", "-j", "-u", user).stdout.decode())
    d = ans["user"]["sieve"]
    os.makedirs(d, exist_ok=True)
    path = os.path.join(d, "vacation.script")
    with open(path, "w") as f:
        f.write('require "vacation";\nvacation "away";\n')
    for p in (os.path.dirname(os.path.dirname(d)), os.path.dirname(d), d, path):
        os.chown(p, sb.uid, sb.gid)
    return path


def _ignore_others_quota(snap, user):
    out = json.loads(json.dumps(snap))
    out["#quota"].pop(f"user/{user}", None)
    return out


def _mbtypes(sb):
    return {mb.intname: mb.mbtype for mb in iter_dump(sb.tool("ctl_mboxlist", "-d").stdout.decode().splitlines())}


def test_deleted_user_comes_back_while_mail_flows_to_others(populated, base_dir):
    sb = populated
    sieve = _user_sieve(sb, "alice")
    before = snapshot(sb)
    b = backup(sb, base_dir, exclude={"mailboxes": ["user/*/Junk"]})
    delete_user(sb, "alice")
    assert not os.path.exists(sieve)
    assert not [n for n in snapshot(sb)["alice"]["mailboxes"] if n.startswith("INBOX")]

    with Deliveries(sb, "bob") as d:
        r = restore(b, "user", "alice")
    assert not d.errors, d.errors[:3]
    assert len(d.sent) >= 5, "deliveries must have run during the restore"
    # every message delivered to bob during the restore is there
    got = subjects(sb, "bob")
    assert not set(d.sent) - set(got)

    # alice is back exactly as before the backup (Junk's messages were excluded)
    after = snapshot(sb)
    want = _ignore_others_quota(expected(before, b["manifest"]), "bob")
    have = _ignore_others_quota(without_new_mail(after, want, "bob"), "bob")
    diffs = imapview.diff(want, have)
    assert diffs == [], "\n".join(diffs)
    assert after["alice"]["mailboxes"]["INBOX/Sent"]["special_use"] == ["\\Sent"]
    assert after["alice"]["subscriptions"] == before["alice"]["subscriptions"]
    with open(sieve) as f:
        assert "vacation" in f.read()
    assert os.stat(sieve).st_uid == sb.uid
    # she can receive mail again
    sb.deliver("alice", b"Subject: welcome back\r\n\r\nhi\r\n")
    assert "welcome back" in subjects(sb, "alice")

    m = re.search(r"restore user alice: done in ([0-9.]+) s", r.stdout)
    assert m, r.stdout
    print(
        f"\nsingle-user restore of alice: {m.group(1)} s (inside borg-cyrus), {len(d.sent)} deliveries to bob meanwhile"
    )


def test_legacy_layout_user_and_user_on_two_partitions(populated, base_dir):
    sb = populated
    before = snapshot(sb)
    types = _mbtypes(sb)
    b = backup(sb, base_dir)
    archive_dir = [mb for mb in b["manifest"]["mailboxes"].items() if mb[0] == "user.bob.Archive 2019"][0][1]
    assert archive_dir["partition"] == "second"
    delete_user(sb, "dave")
    delete_user(sb, "bob")
    assert not os.path.exists(os.path.join(sb.partitions["default"], "d", "user", "dave"))

    with Deliveries(sb, "alice") as d:
        r1 = restore(b, "user", "dave")
        r2 = restore(b, "user", "bob")
    assert not d.errors
    assert "restore user dave: done" in r1.stdout and "restore user bob: done" in r2.stdout
    after = snapshot(sb)
    want = _ignore_others_quota(before, "alice")
    have = _ignore_others_quota(without_new_mail(after, want, "alice"), "alice")
    diffs = imapview.diff(want, have)
    assert diffs == [], "\n".join(diffs)
    assert not set(d.sent) - set(subjects(sb, "alice"))
    # dave is back in the legacy layout, bob's archive folder on partition "second"
    now = _mbtypes(sb)
    for name in ("user.dave", "user.dave.Junk", "user.dave.Old Stuff", "user.bob", "user.bob.Archive 2019"):
        assert now[name] == types[name], name
    assert os.path.isfile(os.path.join(sb.partitions["default"], "d", "user", "dave", "Old Stuff", "cyrus.header"))
    u = archive_dir["uniqueid"]
    assert os.path.isfile(os.path.join(sb.partitions["second"], "uuid", u[0], u[1], u, "4."))
    # restored files belong to cyrus:mail, including the parents borg would create as root
    for root in sb.partitions.values():
        for dirpath, _dirnames, filenames in os.walk(root):
            for n in [dirpath] + [os.path.join(dirpath, x) for x in filenames]:
                st = os.lstat(n)
                assert (st.st_uid, st.st_gid) == (sb.uid, sb.gid), n


def test_restore_list_shows_users_mailboxes_counts_sizes(populated, base_dir):
    b = backup(populated, base_dir, exclude={"mailboxes": ["user/*/Junk"]})
    r = restore(b, "list")
    out = r.stdout
    print("\n" + out)
    assert re.search(r"^alice\s+7\s+16\s+23\d\.\d KiB$", out, re.M), out
    assert re.search(r"^bob\s+2\s+5\s+", out, re.M)
    assert re.search(r"^dave\s+3\s+1\s+", out, re.M)
    assert re.search(r"^user/alice/Entwürfe\s+1\s+1\d\d B\s+default\s+uuid", out, re.M)
    assert re.search(r"^user/bob/Archive 2019\s+4\s+3\.\d KiB\s+second\s+uuid", out, re.M)
    assert re.search(r"^user/dave/Old Stuff\s+0\s+0 B\s+default\s+legacy", out, re.M)
    assert re.search(r"^user/alice/Junk\s+3\s+.*messages excluded from backups$", out, re.M)
    assert "14 mailboxes, 3 users, 25 messages" in out
    # the software the archive comes from: what a restore onto another server needs to know
    assert re.search(r"^  databases: .*annotations twoskip.*mailboxes twoskip.*quota quotalegacy", out, re.M), out
    v = index_version(populated)
    assert re.search(rf"^  cyrus\.index versions: {v} \(14 mailboxes\)$", out, re.M), out
    # one user, and JSON
    r = restore(b, "list", "--user", "dave")
    assert "user/alice" not in r.stdout and "user/dave/Junk" in r.stdout
    data = json.loads(restore(b, "list", "--json").stdout)
    assert data["users"]["alice"]["messages"] == 16
    assert {x["name"] for x in data["mailboxes"]} >= {"user/alice/Entwürfe", "shared/team"}
    # an explicit archive; a borgmatic config with two repositories needs --repository
    from support.helpers import latest_archive, read_yaml
    from support.common import write_config

    name = latest_archive(b["repo"])
    assert f"archive {name} in" in restore(b, "list", "--archive", name).stdout
    two = read_yaml(b["bm"])
    two["repositories"] = [{"path": b["repo"], "label": "main"}, {"path": b["repo"] + "-offsite", "label": "off"}]
    bm2 = write_config(os.path.join(base_dir, "borgmatic-two.yaml"), two)
    r = cli("restore", "list", "--borgmatic-config", bm2, config=b["bc"], check=2)
    assert "several repositories" in r.stderr and "--repository" in r.stderr
    r = cli("restore", "list", "--borgmatic-config", bm2, "--repository", "main", config=b["bc"], check=0)
    assert "user/alice/Entwürfe" in r.stdout
    r = cli(
        "restore",
        "list",
        "--borgmatic-config",
        bm2,
        "--archive",
        "no-such-archive",
        "--repository",
        "main",
        config=b["bc"],
        check=1,
    )
    assert "no-such-archive" in r.stderr
    # only the dump is extracted, never the spool
    r = cli("-v", "restore", "list", "--borgmatic-config", b["bm"], config=b["bc"], check=0)
    extracts = [
        ln
        for ln in r.stderr.splitlines()
        if "running" in ln and " extract " in ln or "borg (one pass): extracting" in ln
    ]
    assert extracts and all(ln.rstrip().endswith("/dump") or "/dump " in ln for ln in extracts), extracts
    assert not os.listdir(os.path.join(b["work"], "staging"))


def test_dry_run_changes_nothing(populated, base_dir):
    sb = populated
    b = backup(sb, base_dir, exclude={"mailboxes": ["user/*/Junk"]})
    delete_user(sb, "alice")
    a = sb.imap("cyrus")
    a.setacl('"user/bob/Archive 2019"', "cyrus", "lrswipkxtecda")
    a.delete('"user/bob/Archive 2019"')
    a.logout()
    sb.tool("cyr_expire", "-D", "0")
    snap1 = snapshot(sb)
    tree1 = tree(sb.base)
    r = cli("-n", "restore", "user", "alice", "--borgmatic-config", b["bm"], config=b["bc"], check=0)
    out = r.stdout
    assert "would extract" in out and "would create user/alice (uniqueid" in out
    assert "would run: reconstruct -P" in out and "would run: reconstruct -r -u -- alice" in out
    assert "would run: quota -f -- user/alice" in out
    assert re.search(r"^  /.*/spool-default/uuid/./././?\w+$", out, re.M) or "/spool-default/uuid/" in out
    r = cli("-n", "restore", "mailbox", "user/bob/Archive 2019", "--borgmatic-config", b["bm"], config=b["bc"], check=0)
    assert "would create user/bob/Archive 2019" in r.stdout and "/spool-second/uuid/" in r.stdout
    r = cli(
        "-n",
        "restore",
        "mailbox",
        "user/bob",
        "--into",
        "user/bob/Restored",
        "--borgmatic-config",
        b["bm"],
        config=b["bc"],
        check=0,
    )
    assert "would create user/bob/Restored from user/bob" in r.stdout
    r = cli(
        "-n",
        "verify",
        "--borgmatic-config",
        b["bm"],
        "--workdir",
        os.path.join(base_dir, "verify"),
        config=b["bc"],
        check=0,
    )
    assert "would extract archive" in r.stdout
    assert tree(sb.base) == tree1
    assert snapshot(sb) == snap1
    assert not os.path.exists(os.path.join(base_dir, "verify"))
    staging = os.path.join(b["work"], "staging")
    assert not os.path.exists(staging) or not os.listdir(staging)


def test_deleted_but_not_yet_purged_user(populated, base_dir):
    """Delayed delete keeps the mailboxes as DELETED.user.alice.* with their
    uniqueids (and directories): the restore uses new uniqueids instead."""
    sb = populated
    before = snapshot(sb)
    b = backup(sb, base_dir)
    a = sb.imap("cyrus")
    a.setacl("user/alice", "cyrus", "lrswipkxtecda")
    assert a.delete("user/alice")[0] == "OK"
    a.logout()
    assert any(n.startswith("DELETED.user.alice") for n in _mbtypes(sb))
    r = restore(b, "user", "alice")
    assert "restored under a new uniqueid" in r.stdout
    after = snapshot(sb)
    diffs = imapview.diff(json.loads(json.dumps(before)), json.loads(json.dumps(after)))
    assert diffs == [], "\n".join(diffs)
    # the deleted copies are still there for cyr_expire to purge, untouched
    assert any(n.startswith("DELETED.user.alice") for n in _mbtypes(sb))


def test_restore_user_brings_back_managesieve_scripts(sandbox, base_dir):
    """ManageSieve scripts live in the user's #sieve mailbox (mbtype f) on 3.6:
    a deleted user's scripts, and which one is active, come back."""
    sb = sandbox
    a = sb.imap()
    for box in ("user/carol", "user/carol/Lists"):
        assert a.create(box)[0] == "OK"
    a.logout()
    sb.put_sieve("carol", "vacation", 'require "vacation";\nvacation "Bin im Urlaub — zurück am 3.";\n', active=True)
    sb.put_sieve("carol", "lists", 'require "fileinto";\nif header :contains "list-id" "x" { fileinto "Lists"; }\n')
    before = imapview.snapshot(sb, ["carol"])
    assert before["carol"]["sieve"]["active"] == ["vacation"] and len(before["carol"]["sieve"]["scripts"]) == 2
    b = backup(sb, base_dir)
    delete_user(sb, "carol")
    restore(b, "user", "carol")
    after = imapview.snapshot(sb, ["carol"])
    assert after["carol"] == before["carol"]
    assert "user.carol.#sieve" in _mbtypes(sb)
