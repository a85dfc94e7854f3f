"""`borg-cyrus init` on a throwaway Cyrus whose locations are in a btrfs
subvolume on a loop device, and on a plain directory (ext4 here): it picks
the mode, both generated configs pass borgmatic's own validator and
`borg-cyrus config validate`, and a backup with exactly those configs
followed by a restore is IMAP-identical."""

import json
import os

import pytest

from borg_cyrus.cyrus import imapview
from borg_cyrus.tools.demo import populate
from support.common import cli
from support.helpers import borgmatic, expected, load_manifest, read_yaml, snapshot
from support.restore_helpers import delete_user
from support.setups import Setup

pytestmark = [pytest.mark.needs_root, pytest.mark.slow]


@pytest.fixture(params=["btrfs", "plain"])
def setup(request, base_dir):
    s = Setup(base_dir, request.param)
    yield s
    s.destroy()


def test_init_then_backup_and_restore_with_the_generated_configs(setup):
    s = setup
    sb = s.sb.create()
    sb.start()
    populate(sb)
    before = snapshot(sb)
    bc, bm, repo = (os.path.join(s.base, n) for n in ("generated-bc.yaml", "generated-bm.yaml", "repo"))
    svc = sb.borg_cyrus_service()
    service = [
        "--service=manager=command",
        f"--service=pidfile={svc['pidfile']}",
        f"--service=start_command={json.dumps(svc['start_command'])}",
    ]
    args = ["init", "--imapd-conf", sb.imapd_conf, "--borg-cyrus-config", bc, "--borgmatic-config", bm]
    args += ["--repository", repo, "--encryption", "none", "--work-directory", s.work, *service]
    r = cli(*args, input="", check=0)
    out = r.stdout
    assert f"borgmatic config validate -c {bm}: valid" in out, out
    assert f"borg-cyrus -c {bc} config validate: valid" in out, out
    assert f"borgmatic -c {bm} repo-create --encryption none" in out
    assert f"borgmatic -c {bm} create --verbosity 1" in out and f"borg-cyrus -c {bc} verify" in out
    for p in (bc, bm):
        assert os.stat(p).st_mode & 0o777 == 0o600
    want = "btrfs" if s.provider == "btrfs" else "stop-master"
    cfg = read_yaml(bc)
    assert cfg["mode"] == want and cfg["imapd_conf"] == sb.imapd_conf and cfg["cyrus_conf"] == sb.cyrus_conf
    assert "# Why this mode:" in open(bc).read()
    # the generated files validate once more on their own, as a user would check them
    borgmatic(bm, "config", "validate")
    cli("config", "validate", config=bc, check=0)
    # never replaced without --force
    again = cli(*args, input="")
    assert again.returncode == 2 and "exists; not replacing it" in again.stderr

    # a backup with exactly the generated configs: the hooks name the borg-cyrus config
    borgmatic(bm, "repo-create", "--encryption", "none")
    create = borgmatic(bm, "create", "--verbosity", "1")
    manifest = load_manifest(s.work)
    assert manifest["mode"] == want
    if want == "btrfs":
        assert "snapshots of 1 volume(s)" in manifest["view"], manifest["view"]
        assert "write-blocked window" in create.stdout + create.stderr
    assert s.leftovers() == []

    # lose a user; bring them back through the generated configs
    delete_user(sb, "alice")
    cli("restore", "user", "alice", "--borgmatic-config", bm, config=bc, check=0)
    assert imapview.diff(expected(before, manifest), snapshot(sb)) == []
