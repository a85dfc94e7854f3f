"""Plugins: built-ins and a third-party package load through the same entry-point group."""

import json
import os
import textwrap

import pytest

from support.common import cli, sandbox_config

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
