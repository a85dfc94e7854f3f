"""Plugins: built-ins and a third-party package load through the same entry-point group."""

import imaplib
import json
import os
import subprocess
import textwrap

import pytest

from support.common import ROOT, cli, sandbox_config
from support.helpers import borgmatic, borgmatic_config, extract, init_repo, load_manifest, wipe

PLUGIN = textwrap.dedent('''
    import os
    from borg_cyrus.hookspecs import hookimpl
    from borg_cyrus.model import DumpRecord, Exclude

    @hookimpl
    def excludes(ctx, view):
        return [Exclude(os.path.join(ctx.layout.configdirectory, "user_deny.db"), None, "example: deny list")]

    @hookimpl
    def dump(ctx, view, dump_dir, mailboxes):
        path = os.path.join(dump_dir, "example-users.txt")
        users = sorted({mb.userid for mb in mailboxes if mb.userid})
        with open(path, "w") as f:
            f.write("\\n".join(users) + "\\n")
        return [DumpRecord("example-users.txt", ["example-users.txt"], len(users), os.path.getsize(path))]
''')


@pytest.fixture
def third_party(tmp_path):
    """An installed distribution `borg-cyrus-example` (a dist-info on the path)
    whose entry point in group borg_cyrus names its module."""
    (tmp_path / "borg_cyrus_example.py").write_text(PLUGIN)
    info = tmp_path / "borg_cyrus_example-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: borg-cyrus-example\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[borg_cyrus]\nexample = borg_cyrus_example\n")
    return {"PYTHONPATH": str(tmp_path)}


def test_builtin_plugins_listed():
    out = cli("plugins", check=0).stdout
    for name, hook in [
        ("core", "locations"),
        ("dumps", "dump"),
        ("excludes", "excludes"),
        ("live", "modes"),
        ("stop_master", "modes"),
    ]:
        block = out.split(name, 1)[1].split("\n")[1]
        assert hook in block, (name, out)
    assert "modes: live" in out and "modes: stop-master" in out


def test_third_party_plugin_listed(third_party):
    out = cli("plugins", check=0, extra_env=third_party).stdout
    assert "example" in out and "borg_cyrus_example (borg-cyrus-example)" in out
    block = out.split("borg_cyrus_example", 1)[1].split("\n")[1]
    assert "dump" in block and "excludes" in block


@pytest.mark.needs_root
def test_third_party_plugin_adds_exclude_and_dump(populated, base_dir, third_party):
    cfg = sandbox_config(populated, base_dir)
    work = os.path.join(base_dir, "work")
    cli("before", config=cfg, check=0, extra_env=third_party)
    cli("after", config=cfg, check=0, extra_env=third_party)
    patterns = open(os.path.join(work, "patterns")).read()
    assert f"- pp:{populated.confdir}/user_deny.db" in patterns
    assert open(os.path.join(work, "dump", "example-users.txt")).read().split() == ["alice", "bob", "dave"]
    manifest = json.load(open(os.path.join(work, "dump", "manifest.json")))
    rec = [d for d in manifest["dumps"] if d["name"] == "example-users.txt"]
    assert rec and rec[0]["plugin"] == "example" and rec[0]["records"] == 3
    # without the plugin neither appears
    cli("before", config=cfg, check=0)
    cli("after", config=cfg, check=0)
    assert "user_deny.db" not in open(os.path.join(work, "patterns")).read()
    assert not os.path.exists(os.path.join(work, "dump", "example-users.txt"))


def test_plugin_filter_env(third_party):
    env = dict(third_party, BORG_CYRUS_PLUGINS="core,dumps,excludes,live,stop_master")
    assert "borg_cyrus_example" not in cli("plugins", check=0, extra_env=env).stdout


@pytest.fixture
def userdeny_plugin(tmp_path):
    """docs/example_plugin/borg_cyrus_userdeny.py, installed as a distribution
    (a dist-info on the path with its entry point), exactly as the docs show it."""
    src = os.path.join(ROOT, "docs", "example_plugin")
    info = tmp_path / "borg_cyrus_userdeny-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: borg-cyrus-userdeny\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[borg_cyrus]\nuserdeny = borg_cyrus_userdeny\n")
    return {"PYTHONPATH": f"{tmp_path}:{src}"}


def test_the_documented_example_plugin_is_the_tested_one():
    with open(os.path.join(ROOT, "docs", "example_plugin", "borg_cyrus_userdeny.py")) as f:
        code = f.read()
    with open(os.path.join(ROOT, "docs", "architecture.md")) as f:
        assert code.strip() in f.read()


@pytest.mark.needs_root
@pytest.mark.slow
def test_restore_full_restores_a_third_party_dump(populated, base_dir, userdeny_plugin):
    """The example plugin dumps Cyrus's deny list; `restore full` rebuilds the
    lost database from that dump through the plugin's restore_dump hook, and
    the restored server still refuses the denied user."""
    sb = populated
    deny = [os.path.join(sb.tools.directory, "cyr_deny"), "-C", sb.imapd_conf]
    subprocess.run([*deny, "-s", "imap", "-m", "denied on purpose", "bob"], check=True)
    bc = sandbox_config(sb, base_dir, mode="stop-master")
    repo = os.path.join(base_dir, "repo")
    bm = borgmatic_config(base_dir, repo, os.path.join(base_dir, "work", "patterns"))
    init_repo(bm)
    borgmatic(bm, "create", bc_config=bc, extra_env=userdeny_plugin)
    m = load_manifest(os.path.join(base_dir, "work"))
    rec = [d for d in m["dumps"] if d["name"] == "user_deny.db.batch"]
    assert rec and rec[0]["plugin"] == "userdeny" and rec[0]["records"] == 1
    wipe(sb)
    subprocess.run(["rm", "-rf", os.path.join(base_dir, "work", "dump")], check=True)
    extract(repo)
    os.unlink(os.path.join(sb.confdir, "user_deny.db"))  # lost; only the dump has it
    r = cli("restore", "full", config=bc, check=0, extra_env=userdeny_plugin)
    assert "user_deny.db from user_deny.db.batch (1 denied user(s))" in r.stderr, r.stderr
    sb.start()
    listed = subprocess.run([*deny, "-l"], capture_output=True, text=True, check=True).stdout
    assert "bob" in listed and "denied on purpose" in listed
    with pytest.raises(imaplib.IMAP4.error):
        sb.imap("bob")
    sb.imap("alice").logout()
