"""One mail user's odd folder names are data, not a reason to stop every backup.

Cyrus accepts `CREATE "INBOX/.."`, `"INBOX/a/../b"` and `"INBOX/./x"` from an
ordinary user (internally `user.alice.^^` ...); a deleted one lives on under
delayed delete as `DELETED.user.alice.^^.<hex>`. In 3.x such names never
become paths (uuid spool; in the legacy layout `^` stays a literal character).
The backup passes and names them, restores of their owner are IMAP-identical,
and the admin-side target of a restore (`--into`) still refuses traversal."""

import os
import subprocess

import pytest

from borg_cyrus.cyrus import imapview
from borg_cyrus.cyrus.imapview import quote
from borg_cyrus.cyrus.sandbox import Sandbox
from borg_cyrus.tools.demo import msg, populate
from support.common import cli
from support.helpers import expected, extract, snapshot, wipe
from support.restore_helpers import _boxes_by_name, backup, delete_user, restore

pytestmark = [pytest.mark.needs_root, pytest.mark.slow]

ODD = ("INBOX/..", "INBOX/a/../b", "INBOX/./x")


def _make_odd(sb, user):
    """The odd folders, made over IMAP by the user, one message in each; one more made and deleted."""
    c = sb.imap(user)
    try:
        for name in ODD + ("INBOX/gone/..",):
            assert c.create(quote(name))[0] == "OK", name
            assert c.append(quote(name), None, None, msg(f"in {name}", f"{user}'s mail in {name}"))[0] == "OK"
        assert c.delete(quote("INBOX/gone/.."))[0] == "OK"
    finally:
        c.logout()


def _one_error(r):
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("borg-cyrus: error: ")]
    assert r.returncode != 0 and len(errors) == 1 and "Traceback" not in r.stderr, r.stdout + r.stderr
    return errors[0]


def test_odd_folder_names_are_backed_up_and_restored(base_dir):
    sb = Sandbox(
        os.path.join(base_dir, "cyrus"), partitions=("default", "second"), extra_conf={"delete_mode": "delayed"}
    ).create()
    sb.start()
    populate(sb)
    _make_odd(sb, "alice")  # uuid layout
    sb.restart_with_legacy_dirs(True)
    _make_odd(sb, "dave")  # legacy layout: <partition>/d/user/dave/^^
    sb.restart_with_legacy_dirs(False)
    assert os.path.isdir(os.path.join(sb.partitions["default"], "d", "user", "dave", "^^"))
    names = set(_boxes_by_name(sb))
    assert {"user.alice.^^", "user.alice.a.^^.b", "user.alice.^.x", "user.dave.^^"} <= names
    deleted = sorted(n for n in names if n.startswith(("DELETED.user.alice.gone.^^.", "DELETED.user.dave.gone.^^.")))
    assert len(deleted) == 2, names
    before = snapshot(sb)
    assert "INBOX/.." in before["alice"]["mailboxes"] and "INBOX/a/../b" in before["dave"]["mailboxes"]

    # the backup through borgmatic passes and names the oddity (a warning line and the manifest)
    b = backup(sb, base_dir)
    out = b["create"].stdout + b["create"].stderr
    assert "user/alice/.." in out and "name component '..'" in out, out
    odd = {x["name"]: x for x in b["manifest"]["odd_names"]}
    assert {"user/alice/..", "user/alice/a/../b", "user/alice/./x", "user/dave/.."} <= set(odd)
    gone = sorted(n for n in odd if n.startswith("DELETED/"))
    assert len(gone) == 2 and gone[0].startswith("DELETED/user/alice/gone/../"), gone
    assert gone[1].startswith("DELETED/user/dave/gone/../") and odd[gone[0]]["why"] == "a name component '..'"

    # the admin side stays closed: a target that climbs out of its folder is refused, nothing changes
    stolen = "user/alice/x/../../bob/Stolen"
    for args in (
        ("messages", "user/alice/..", "--into", stolen),
        ("mailbox", "user/alice/..", "--into", stolen),
        ("mailbox", "user/alice", "--recursive", "--into", "user/bob/./Stolen"),
        ("messages", "user/alice/a/../b", "--into", "user/bob//Stolen"),
    ):
        line = _one_error(restore(b, *args, check=None))
        assert "--into" in line and "component" in line, line
    assert imapview.diff(before, snapshot(sb)) == []
    assert not [n for n in _boxes_by_name(sb) if "Stolen" in n]

    # a folder restore of the odd folders, in place
    for user, folders in (("alice", ("INBOX/..", "INBOX/a/../b")), ("dave", ("INBOX/./x",))):
        c = sb.imap(user)
        for f in folders:
            assert c.delete(quote(f))[0] == "OK", f
        c.logout()
    assert "INBOX/.." not in snapshot(sb)["alice"]["mailboxes"]
    for name in ("user/alice/..", "user/alice/a/../b", "user/dave/./x"):
        restore(b, "mailbox", name)
    assert imapview.diff(before, snapshot(sb)) == []

    # the odd folders' owners, deleted and purged, come back whole
    delete_user(sb, "alice")
    delete_user(sb, "dave")
    r = restore(b, "user", "alice")
    assert "restore user alice: done" in r.stdout
    restore(b, "user", "dave")
    diffs = imapview.diff(expected(before, b["manifest"]), snapshot(sb))
    assert diffs == [], "\n".join(diffs)

    # and a full restore onto a rebuilt machine brings back everything, the deleted ones too
    wipe(sb)
    subprocess.run(["rm", "-rf", os.path.join(b["work"], "dump")], check=True)
    extract(b["repo"])
    cli("restore", "full", config=b["bc"], check=0)
    sb.start()
    diffs = imapview.diff(expected(before, b["manifest"]), snapshot(sb))
    assert diffs == [], "\n".join(diffs)
    assert set(deleted) <= set(_boxes_by_name(sb))
