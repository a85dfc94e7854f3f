"""`borg-cyrus verify` (the restore drill) on real archives, and the
backup-time consistency report."""

import json
import os
import re
import shutil

import pytest

from borg_cyrus.cyrus import storage
from borg_cyrus.cyrus.layout import discover
from support.common import cli, sandbox_config
from support.helpers import load_manifest
from support.restore_helpers import _boxes_by_name, backup


def _verify(b, base_dir, *args, check=0):
    return cli(
        "verify",
        "--borgmatic-config",
        b["bm"],
        "--workdir",
        os.path.join(base_dir, "drill"),
        *args,
        config=b["bc"],
        check=check,
    )


@pytest.mark.slow
def test_verify_passes_on_a_good_archive(populated, base_dir):
    b = backup(populated, base_dir, mode="stop-master", exclude={"mailboxes": ["user/*/Junk"]})
    r = _verify(b, base_dir)
    print("\n" + r.stdout)
    assert "RESULT: OK" in r.stdout
    assert re.search(r"checked 14 mailboxes, 22 message files .*, 22 messages served over IMAP", r.stdout), r.stdout
    r = _verify(b, base_dir, "--deep", "--json")
    rep = json.loads(r.stdout)
    assert rep["ok"] and rep["stats"]["hashed"] == 22 and rep["failures"] == {}
    # torn down: nothing left in the work directory, no server running
    assert os.listdir(os.path.join(base_dir, "drill")) == []
    assert populated.running()


@pytest.mark.slow
def test_verify_fails_naming_the_mailbox_when_a_message_file_is_missing(populated, base_dir):
    sb = populated
    lay = storage.PathLayout.from_layout(discover(sb.imapd_conf))
    boxes = _boxes_by_name(sb)
    victim = os.path.join(storage.data_dir(lay, boxes["user.bob.Archive 2019"]), "3.")
    assert os.path.exists(victim)
    # an archive that lacks one message file: leave it out with an exclude pattern
    b = backup(sb, base_dir, mode="stop-master", exclude={"paths": [victim]})
    r = _verify(b, base_dir, check=1)
    print("\n" + r.stdout)
    assert "FAIL user/bob/Archive 2019: 1 message file(s) missing from the archive (UID 3)" in r.stdout
    assert "RESULT: FAILED — 1 mailbox(es) differ: user/bob/Archive 2019" in r.stdout
    assert "verify: archive" in r.stderr and "FAILED: user/bob/Archive 2019" in r.stderr

    # an altered message is only caught byte for byte (--deep)
    shutil.rmtree(b["repo"])
    with open(os.path.join(storage.data_dir(lay, boxes["user.alice.Sent"]), "1."), "r+b") as f:
        data = f.read()
        f.seek(0)
        f.write(data.replace(b"Sent body 0", b"Sent b0dy 0"))
    b = backup(sb, base_dir, mode="stop-master")
    assert "RESULT: OK" in _verify(b, base_dir).stdout
    r = _verify(b, base_dir, "--deep", check=1)
    assert "FAIL user/alice/Sent: UID 1: content differs from the index GUID (SHA-1)" in r.stdout
    assert "1 message(s) served with other bytes than archived (UID 1)" in r.stdout


@pytest.mark.needs_root
def test_consistency_report_at_backup_time(populated, base_dir):
    sb = populated
    lay = storage.PathLayout.from_layout(discover(sb.imapd_conf))
    boxes = _boxes_by_name(sb)
    cfg = sandbox_config(sb, base_dir)
    r = cli("before", config=cfg, check=0)
    assert "consistency" not in r.stderr
    cli("after", config=cfg, check=0)
    assert load_manifest(os.path.join(base_dir, "work"))["consistency"]["counts"] == {
        "mailboxes_without_directory": 0,
        "directories_without_mailbox": 0,
    }

    # a mailbox whose directory vanished, and a directory nobody owns
    gone = storage.data_dir(lay, boxes["user.alice.Trash"])
    shutil.move(gone, os.path.join(base_dir, "trash-aside"))
    orphan = os.path.join(sb.partitions["second"], "uuid", "z", "z", "zzzzorphan0000000000000a")
    os.makedirs(orphan)
    r = cli("before", config=cfg, check=0)
    cli("after", config=cfg, check=0)
    lines = [ln for ln in r.stderr.splitlines() if "consistency:" in ln]
    assert len(lines) == 1, r.stderr
    assert "1 mailbox(es) in the mailbox list without a directory (e.g. user/alice/Trash)" in lines[0]
    assert f"1 directory(ies) without a mailbox entry (e.g. {orphan})" in lines[0]
    rep = load_manifest(os.path.join(base_dir, "work"))["consistency"]
    assert rep["counts"] == {"mailboxes_without_directory": 1, "directories_without_mailbox": 1}
    assert rep["mailboxes_without_directory"] == ["user.alice.Trash"]
    assert rep["directories_without_mailbox"] == [orphan]
