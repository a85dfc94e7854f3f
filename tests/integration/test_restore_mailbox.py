"""`borg-cyrus restore mailbox` with real Cyrus, borg and borgmatic: a folder
into a new folder (same bytes, same order), a deleted folder in place (with
its METADATA), and the refusal to touch a non-empty mailbox without --force."""

import re

import pytest

from borg_cyrus.cyrus import imapview
from support.helpers import snapshot
from support.restore_helpers import backup, delete_mailbox, restore

pytestmark = pytest.mark.slow


def _ordered(box):
    """[(sha256, size)] of a mailbox's messages in UID order."""
    return [(m["sha256"], m["size"]) for _uid, m in sorted(box["messages"].items(), key=lambda kv: int(kv[0]))]


def test_folder_into_new_folder_same_bytes_same_order(populated, base_dir):
    sb = populated
    before = snapshot(sb)
    b = backup(sb, base_dir)
    # the mail changes after the backup; the restore brings back the archived state
    al = sb.imap("alice")
    al.select(imapview.quote("INBOX/Project X/2024"))
    al.store("1:*", "+FLAGS", "(\\Deleted)")
    al.expunge()
    al.logout()

    r = restore(b, "mailbox", "user/alice/Project X", "--recursive", "--into", "user/bob/Restored-2026-11-26")
    assert "2 to create" in r.stdout
    r = restore(b, "mailbox", "user/alice", "--into", "user/alice/Restored INBOX")
    r = restore(b, "mailbox", "user/alice/Entwürfe", "--into", "user/alice/Entwürfe (restored)")
    after = snapshot(sb)

    src = before["alice"]["mailboxes"]
    bob = after["bob"]["mailboxes"]
    assert _ordered(bob["INBOX/Restored-2026-11-26/2024"]) == _ordered(src["INBOX/Project X/2024"])
    assert len(_ordered(bob["INBOX/Restored-2026-11-26/2024"])) == 2
    assert bob["INBOX/Restored-2026-11-26"]["messages"] == {}
    # the owner of the new folder owns it (ACL inherited from the parent, as CREATE does)
    assert bob["INBOX/Restored-2026-11-26/2024"]["acl"].endswith("bob lrswipkxtecdan")
    alice = after["alice"]["mailboxes"]
    inbox, restored = src["INBOX"], alice["INBOX/Restored INBOX"]
    assert _ordered(restored) == _ordered(inbox)
    assert len(restored["messages"]) == 6  # including the 230 KiB attachment
    # UIDs and flags/keywords come along with the archived index
    assert {u: m["flags"] for u, m in restored["messages"].items()} == {
        u: m["flags"] for u, m in inbox["messages"].items()
    }
    assert _ordered(alice["INBOX/Entwürfe (restored)"]) == _ordered(src["INBOX/Entwürfe"])
    # the originals are untouched, the source of the first restore still emptied
    assert alice["INBOX"] == inbox
    assert alice["INBOX/Project X/2024"]["messages"] == {}
    # quota was recomputed for the receiving users
    q = sb.imap("cyrus").getquota('"user/bob"')[1][0].decode()
    assert re.search(r"STORAGE (\d+)", q) and int(re.search(r"STORAGE (\d+)", q).group(1)) > 3


def test_deleted_folder_comes_back_in_place_with_metadata(populated, base_dir):
    sb = populated
    before = snapshot(sb)
    b = backup(sb, base_dir)
    delete_mailbox(sb, "user/alice/Sent")
    delete_mailbox(sb, "user/bob/Archive 2019")
    assert "INBOX/Sent" not in snapshot(sb)["alice"]["mailboxes"]
    restore(b, "mailbox", "user/alice/Sent")
    restore(b, "mailbox", "user/bob/Archive 2019")
    after = snapshot(sb)
    assert imapview.diff(before, after) == []
    assert after["alice"]["mailboxes"]["INBOX/Sent"]["metadata"] == {
        "/private/comment": "my sent mail",
        "/private/specialuse": "\\Sent",
    }
    assert after["bob"]["mailboxes"]["INBOX/Archive 2019"]["metadata"]["/shared/comment"] == 'old mail: "do not delete"'


def test_existing_mailbox_is_refused_then_merged_with_force(populated, base_dir):
    sb = populated
    before = snapshot(sb)["alice"]["mailboxes"]["INBOX"]
    b = backup(sb, base_dir)
    al = sb.imap("alice")
    al.select("INBOX")
    al.uid("STORE", "2,6", "+FLAGS", "(\\Deleted)")
    al.expunge()
    al.logout()
    sb.deliver("alice", b"Subject: newer than the backup\r\n\r\nkeep me\r\n")

    r = restore(b, "mailbox", "user/alice", check=1)
    assert "1 mailbox(es) exist and are not empty: user/alice (5 message(s))" in r.stderr and "--force" in r.stderr
    restore(b, "mailbox", "user/alice", "--force")
    now = snapshot(sb)["alice"]["mailboxes"]["INBOX"]["messages"]
    have = {m["sha256"] for m in now.values()}
    assert {m["sha256"] for m in before["messages"].values()} <= have
    assert len(now) == 7  # 6 archived + 1 newer, no duplicates
    kept = {u: m for u, m in now.items() if int(u) <= 7}
    assert sorted(map(int, kept)) == [1, 3, 4, 5, 7]  # untouched messages keep their UIDs
    assert all(int(u) > 1000 for u in now if int(u) not in (1, 3, 4, 5, 7))
    # a second --force run finds nothing missing
    r = restore(b, "mailbox", "user/alice", "--force")
    assert "added 0 archived message(s) to user/alice" in r.stdout
    # an unknown mailbox or a parent that does not exist are clear errors
    r = restore(b, "mailbox", "user/alice/Nope", check=1)
    assert "mailbox user/alice/Nope is not in archive" in r.stderr
    r = restore(b, "mailbox", "user/alice/Sent", "--into", "user/nobody/x", check=1)
    assert "user/nobody does not exist" in r.stderr


def test_mailbox_named_like_an_option(populated, base_dir):
    """A shared folder called `-rf` is restored as a mailbox name, never
    passed to reconstruct or quota as options."""
    from support.common import cli

    sb = populated
    a = sb.imap("cyrus")
    assert a.create('"-rf"')[0] == "OK"
    assert a.setacl('"-rf"', "alice", "lrswipkxtecda")[0] == "OK"
    a.logout()
    al = sb.imap("alice")
    assert al.append('"-rf"', None, None, b"Subject: dash\r\n\r\nkeep me\r\n")[0] == "OK"
    al.logout()
    before = snapshot(sb)
    b = backup(sb, base_dir)
    delete_mailbox(sb, "-rf")
    assert "-rf" not in snapshot(sb)["alice"]["mailboxes"]
    r = cli("restore", "mailbox", "--borgmatic-config", b["bm"], "--", "-rf", config=b["bc"], check=0)
    assert "reconstruct -- -rf" in r.stdout + r.stderr
    assert imapview.diff(before, snapshot(sb)) == []
