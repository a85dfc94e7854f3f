"""Archives by time (real Cyrus, borg, borgmatic): three nightly archives
with a folder renamed after the first and deleted after the second;
`restore history` follows it by uniqueid, `--at` picks the archive at the
boundaries, and `verify --at` checks the one it picks."""

import json
import subprocess

import pytest

from borg_cyrus.restore.when import archive_time
from support.common import env
from support.helpers import borgmatic
from support.restore_helpers import backup, delete_mailbox, restore

pytestmark = [pytest.mark.needs_root, pytest.mark.slow]


def archive_times(repo):
    out = subprocess.run(["borg", "list", "--json", repo], capture_output=True, text=True, check=True, env=env())
    return [(a["name"], archive_time(a)) for a in json.loads(out.stdout)["archives"]]


def test_history_and_at(populated, base_dir):
    sb = populated
    b = backup(sb, base_dir, mode="stop-master")
    a = sb.imap("cyrus")
    a.setacl('"user/bob/Archive 2019"', "cyrus", "lrswipkxtecda")
    assert a.rename('"user/bob/Archive 2019"', '"user/bob/Old Archive"')[0] == "OK"
    a.logout()
    sb.deliver("bob", "Subject: after the first night\r\n\r\nnew\r\n")
    borgmatic(b["bm"], "create", bc_config=b["bc"])
    delete_mailbox(sb, "user/bob/Old Archive")
    borgmatic(b["bm"], "create", bc_config=b["bc"])
    (n1, t1), (n2, t2), (n3, t3) = archive_times(b["repo"])

    r = restore(b, "history", "user/bob/Archive 2019")
    out = r.stdout
    print(out)
    lines = [ln for ln in out.splitlines() if ln.startswith("  ") and "ARCHIVE" not in ln]
    assert len(lines) == 3, out
    assert n1 in lines[0] and "user/bob/Archive 2019" in lines[0] and "first seen" in lines[0]
    assert n2 in lines[1] and "user/bob/Old Archive" in lines[1] and "renamed from user/bob/Archive 2019" in lines[1]
    assert n3 in lines[2] and "gone" in lines[2]
    data = json.loads(restore(b, "history", "--user", "bob", "--json").stdout)
    assert data["archives"] == 3
    (tl,) = [v for v in data["mailboxes"].values() if any(x["mailbox"] == "user/bob/Old Archive" for x in v)]
    assert [x["note"] for x in tl] == ["first seen", "renamed from user/bob/Archive 2019", "gone (deleted or purged)"]
    assert tl[0]["messages"] == tl[1]["messages"] == 4 and tl[2]["messages"] is None
    inbox = [v for v in data["mailboxes"].values() if v[0]["mailbox"] == "user/bob"][0]
    assert inbox[1]["messages"] == inbox[0]["messages"] + 1  # the mail of the second day

    # --at: exactly an archive's time picks it, a microsecond earlier the one before, a day its last
    iso = "%Y-%m-%dT%H:%M:%S.%f"
    assert f"archive {n2} in" in restore(b, "list", "--at", t2.strftime(iso)).stdout
    earlier = t2.replace(microsecond=t2.microsecond - 1) if t2.microsecond else None
    if earlier:
        assert f"archive {n1} in" in restore(b, "list", "--at", earlier.strftime(iso)).stdout
    assert f"archive {n3} in" in restore(b, "list", "--at", "now").stdout
    assert f"archive {n3} in" in restore(b, "list", "--at", t3.strftime("%Y-%m-%d")).stdout
    r = restore(b, "list", "--at", "2020-01-01", check=2)
    assert "no archive was made at or before 2020-01-01 (the oldest is from" in r.stderr, r.stderr
    r = restore(b, "list", "--at", "last tuesday", check=2)
    assert "is not a date" in r.stderr
    r = restore(b, "list", "--at", "now", "--archive", n1, check=1)
    assert "not both" in r.stderr
    # a restore by time: the folder as it was in the second night's archive
    r = restore(b, "mailbox", "user/bob/Old Archive", "--at", t2.strftime(iso))
    assert f"from archive {n2}" in r.stdout, r.stdout
    bo = sb.imap("bob")
    typ, data = bo.select('"INBOX/Old Archive"')
    assert typ == "OK" and int(data[0]) == 4
    bo.logout()
