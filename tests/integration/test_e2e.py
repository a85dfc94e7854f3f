"""End to end with real Cyrus 3.6, borgmatic 2.1 and borg 1.4:
back up through the shipped sample config, wipe, extract, restore, compare
what IMAP clients see."""

import os
import subprocess

import pytest

from borg_cyrus.cyrus import imapview
from support.common import cli, sandbox_config
from support.helpers import (
    archive_paths,
    borgmatic,
    borgmatic_config,
    expected,
    extract,
    init_repo,
    load_manifest,
    snapshot,
    wipe,
)

pytestmark = pytest.mark.slow

DEFAULT_WORK = "/var/lib/borg-cyrus"


def junk_dirs(sb, manifest):
    """{name: data dir} of the excluded Junk folders (uuid and legacy)."""
    out = {}
    for name, info in manifest["mailboxes"].items():
        if name.endswith(".Junk"):
            part = sb.partitions[info["partition"]]
            u = info["uniqueid"]
            out[name] = os.path.join(part, "uuid", u[0], u[1], u)
    out["user.dave.Junk"] = os.path.join(sb.partitions["default"], "d", "user", "dave", "Junk")
    return out


@pytest.mark.parametrize("lose_dbs", [False, True], ids=["dbs-in-archive", "dbs-rebuilt-from-dumps"])
def test_backup_wipe_restore_is_imap_identical(populated, base_dir, lose_dbs):
    sb = populated
    # an almost empty borg-cyrus config; the default work directory, so the
    # sample borgmatic config is used with only its repository changed
    bc = sandbox_config(sb, base_dir, mode="live", exclude={"mailboxes": ["user/*/Junk"]})
    os.unlink(bc)
    bc = sandbox_config(sb, base_dir, mode="live", exclude={"mailboxes": ["user/*/Junk"]}, work_directory=DEFAULT_WORK)
    repo = os.path.join(base_dir, "repo")
    cfg = borgmatic_config(base_dir, repo)
    init_repo(cfg)
    # a search index and a duplicate-delivery db exist: both must stay out
    sb.tool("squatter", "-r", "user/alice")
    before = snapshot(sb)

    r = borgmatic(cfg, "create", "--verbosity", "1", bc_config=bc)
    assert "mode live: the spool is read while Cyrus runs" in r.stderr + r.stdout
    manifest = load_manifest(DEFAULT_WORK)
    paths = archive_paths(repo)

    # original absolute paths, every partition, the dumps, the configs
    conf = sb.confdir
    for p in [
        f"{conf}/mailboxes.db",
        f"{conf}/annotations.db",
        sb.imapd_conf,
        sb.cyrus_conf,
        f"{DEFAULT_WORK}/dump/mailboxes.json",
        f"{DEFAULT_WORK}/dump/mailboxes.db.batch",
        f"{DEFAULT_WORK}/dump/annotations.db.batch",
        f"{DEFAULT_WORK}/dump/manifest.json",
        f"{DEFAULT_WORK}/dump/cyrus-version.txt",
        sb.partitions["default"],
        sb.partitions["second"],
        f"{sb.sievedir}/alice-demo.script",
    ]:
        assert p in paths, p
    assert any(p.startswith(sb.partitions["second"] + "/uuid/") and p.endswith("/1.") for p in paths)
    # the regenerable and the runtime stay out
    assert f"{conf}/deliver.db" not in paths
    assert not any(p.endswith("cyrus.squat") for p in paths)
    assert not any(p.startswith(sb.rundir) for p in paths)
    assert not any(p.startswith(f"{DEFAULT_WORK}/state") or p == f"{DEFAULT_WORK}/patterns" for p in paths)
    # excluded mailboxes (uuid and legacy layout): folder kept, messages not
    for name, d in junk_dirs(sb, manifest).items():
        assert f"{d}/cyrus.header" in paths, name
        assert not any(
            p.startswith(d + "/") and p.rsplit("/", 1)[1][:-1].isdigit() and p.endswith(".") for p in paths
        ), name
    assert f"{sb.partitions['default']}/d/user/dave/1." in paths  # dave's INBOX (legacy) is there
    assert sorted(manifest["excluded_mailboxes"]) == ["user.alice.Junk", "user.dave.Junk"]
    assert manifest["counts"]["mailboxes"] == 14

    wipe(sb)
    subprocess.run(["rm", "-rf", os.path.join(DEFAULT_WORK, "dump")], check=True)
    extract(repo)
    if lose_dbs:
        os.unlink(f"{conf}/mailboxes.db")
        os.unlink(f"{conf}/annotations.db")
    r = cli("restore", "full", config=bc, check=0)
    if lose_dbs:
        assert "rebuilt" in r.stderr and "mailboxes.db.batch" in r.stderr and "annotations.db.batch" in r.stderr
    sb.start()
    after = snapshot(sb)
    assert imapview.diff(expected(before, manifest), after) == []
    # the excluded folders exist, empty, with their ACL and subscriptions
    assert after["alice"]["mailboxes"]["INBOX/Junk"]["messages"] == {}
    assert after["dave"]["mailboxes"]["INBOX/Junk"]["messages"] == {}
    assert before["alice"]["mailboxes"]["INBOX/Junk"]["messages"] != {}


def test_after_runs_on_borg_failure_and_restarts_cyrus(populated, base_dir):
    sb = populated
    work = os.path.join(base_dir, "work")
    bc = sandbox_config(sb, base_dir, mode="stop-master")
    cfg = borgmatic_config(base_dir, os.path.join(base_dir, "no-such-repo"), os.path.join(work, "patterns"))
    pid_before = sb.pid()
    r = borgmatic(cfg, "create", "--verbosity", "1", bc_config=bc, check=False)
    assert r.returncode != 0
    out = r.stdout + r.stderr
    assert "does not exist" in out or "Repository" in out
    assert "after: done" in out, out
    assert sb.running() and sb.pid() != pid_before, "Cyrus was stopped and must have been started again"
    assert not os.path.exists(os.path.join(work, "state.json"))
    conn = sb.imap("alice")
    conn.select("INBOX")
    conn.logout()


def test_restore_full_after_extract_to_root_fixes_borg_made_parents(base_dir):
    """The runbook on a stock Debian layout: partitions below a directory that
    is not archived (/var/spool/cyrus, cyrus:mail 0755, holds mail/ and news/).
    `cd / && borg extract` recreates it as root 0700; `restore full` gives it
    its recorded owner and mode back, and the server is IMAP-identical."""
    from borg_cyrus.tools.demo import populate
    from borg_cyrus.cyrus.sandbox import Sandbox

    spool, lib = os.path.join(base_dir, "spool"), os.path.join(base_dir, "lib")
    layout = {
        "configdirectory": f"{lib}/cyrus",
        "partition-default": f"{spool}/mail",
        "partition-second": f"{spool}/news",
        "sievedir": f"{spool}/sieve",
    }
    sb = Sandbox(os.path.join(base_dir, "cyrus"), partitions=("default", "second"), layout=layout)
    sb.create()
    for d in (spool, lib):
        os.chown(d, sb.uid, sb.gid)
        os.chmod(d, 0o755)
    sb.start()
    try:
        populate(sb)
        bc = sandbox_config(sb, base_dir, mode="stop-master")
        repo = os.path.join(base_dir, "repo")
        cfg = borgmatic_config(base_dir, repo, os.path.join(base_dir, "work", "patterns"))
        init_repo(cfg)
        before = snapshot(sb)
        borgmatic(cfg, "create", bc_config=bc)
        manifest = load_manifest(os.path.join(base_dir, "work"))
        assert manifest["parents"][spool] == {
            "mode": 0o755,
            "uid": sb.uid,
            "gid": sb.gid,
            "user": "cyrus",
            "group": "mail",
        }
        assert spool not in archive_paths(repo)
        wipe(sb)
        subprocess.run(["rm", "-rf", spool, lib, os.path.join(base_dir, "work", "dump")], check=True)
        extract(repo)  # cd / && borg extract REPO::ARCHIVE
        st = os.stat(spool)
        assert (st.st_uid, st.st_mode & 0o777) == (0, 0o700), "borg extract no longer makes root 0700 parents"
        r = cli("restore", "full", config=bc, check=0)
        assert f"gave {spool} (made by borg extract, root 0700) owner {sb.uid}:{sb.gid} and mode 755" in r.stderr
        st = os.stat(spool)
        assert (st.st_uid, st.st_gid, st.st_mode & 0o777) == (sb.uid, sb.gid, 0o755)
        sb.start()
        assert imapview.diff(expected(before, manifest), snapshot(sb)) == []
    finally:
        sb.stop()
