"""`borg-cyrus init` without root or Cyrus: the mode picked from made-up
filesystem facts (pure planning), the rendered configs against the schema,
`-n` writes nothing, bad input is one line and nothing written."""

import os

import pytest

from borg_cyrus import config as config_mod
from borg_cyrus.context import load_config
from borg_cyrus.tools import init, inspect_host
from borg_cyrus.tools.demo import sample_path
from borg_cyrus.tools.inspect_host import FsFacts, plan_mode
from support.common import cli

GIB = 1 << 30


def btrfs(key, path, sub="/cyrus"):
    return FsFacts(key, path, fstype="btrfs", source="/dev/sdb", mountpoint="/srv", subvolume=sub)


def ext4(key, path, lvm=None):
    return FsFacts(key, path, fstype="ext4", source="/dev/vda1", mountpoint="/", lvm=lvm)


def lv(vg="vg0", name="mail", size=100 * GIB, free=20 * GIB):
    return {"vg": vg, "lv": name, "lv_bytes": size, "vg_free_bytes": free}


def test_all_btrfs_picks_btrfs():
    p = plan_mode([btrfs("configdirectory", "/srv/cyrus/conf"), btrfs("partition-default", "/srv/cyrus/spool")])
    assert p.mode == "btrfs" and p.settings == {}
    assert any("btrfs subvolume /cyrus" in r for r in p.reasons)


def test_one_location_off_btrfs_falls_back_and_says_why():
    p = plan_mode([btrfs("partition-default", "/srv/spool"), ext4("configdirectory", "/var/lib/cyrus")], GIB)
    assert p.mode == "stop-master"
    assert any("configdirectory /var/lib/cyrus is on ext4" in r for r in p.reasons)


def test_zfs():
    f = [FsFacts("partition-default", "/tank/mail", fstype="zfs", source="tank/mail", mountpoint="/tank/mail")]
    assert plan_mode(f).mode == "zfs"


def test_lvm_with_room_for_default_snapshots():
    p = plan_mode([ext4("configdirectory", "/var/lib/cyrus", lv()), ext4("partition-default", "/var/spool", lv())])
    assert p.mode == "lvm" and p.settings == {}


def test_lvm_short_of_room_shares_out_the_free_extents():
    p = plan_mode(
        [ext4("configdirectory", "/a", lv(name="a", free=GIB)), ext4("partition-x", "/b", lv(name="b", free=GIB))]
    )
    assert p.mode == "lvm" and p.settings == {"lvm": {"snapshot_size": "512M"}}


def test_lvm_without_free_extents_falls_back():
    p = plan_mode([ext4("partition-default", "/var/spool", lv(free=0))], GIB)
    assert p.mode == "stop-master" and any("VG vg0 has" in r for r in p.reasons)


def test_large_spool_with_room_picks_rsync_staging_else_stop_master():
    f = [ext4("partition-default", "/var/spool")]
    assert plan_mode(f, 30 * GIB, staging_free=100 * GIB).mode == "rsync-staging"
    small_disk = plan_mode(f, 30 * GIB, staging_free=10 * GIB)
    assert small_disk.mode == "stop-master" and "room for a copy" in small_disk.reasons[-1]
    assert plan_mode(f, GIB, staging_free=100 * GIB).mode == "stop-master"


def test_missing_locations_are_not_considered():
    f = [btrfs("partition-default", "/srv/spool"), FsFacts("sievedir", "/usr/sieve", exists=False)]
    assert plan_mode(f).mode == "btrfs"


@pytest.fixture
def imapd(tmp_path):
    root = tmp_path / "srv"
    for d in ("conf", "spool", "sieve"):
        (root / d).mkdir(parents=True)
    conf = tmp_path / "imapd.conf"
    conf.write_text(f"configdirectory: {root}/conf\npartition-default: {root}/spool\nsievedir: {root}/sieve\n")
    return conf


@pytest.mark.parametrize("mode", ["btrfs", "lvm", "stop-master", "rsync-staging"])
def test_rendered_configs_validate(tmp_path, imapd, mode):
    settings = {"lvm": {"snapshot_size": "512M"}} if mode == "lvm" else {}
    plan = inspect_host.Plan(mode, settings, ["reason one", "reason: two"])
    svc = {"manager": "command", "pidfile": "/run/x.pid", "start_command": ["/usr/sbin/cyrmaster", "-d"]}
    work = str(tmp_path / "work")
    text = init.render_borg_cyrus(plan, svc, "the master binary", str(imapd), "/etc/cyrus.conf", work)
    path = tmp_path / "bc.yaml"
    init.write_private(str(path), text, False)
    assert os.stat(path).st_mode & 0o777 == 0o600
    cfg, _ = load_config(str(path))
    assert cfg["mode"] == mode and cfg["service"]["start_command"][0] == "/usr/sbin/cyrmaster"
    assert cfg["work_directory"] == work and "# Why this mode:\n#   reason one" in text

    with open(sample_path("sample-borgmatic.yaml")) as f:
        sample = f.read()
    bm = init.render_borgmatic(sample, "ssh://u@h/./cyrus", f"{work}/patterns", str(path), "cat /p")
    assert bm.count("#") > 10, "the sample's comments are kept"
    import yaml

    data = yaml.safe_load(bm)
    assert data["repositories"] == [{"path": "ssh://u@h/./cyrus", "label": "cyrus"}]
    assert data["patterns_from"] == [f"{work}/patterns"] and data["encryption_passcommand"] == "cat /p"
    assert [c["run"] for c in data["commands"]] == [
        [f"borg-cyrus -c {path} before"],
        [f"borg-cyrus -c {path} after"],
        [f"borg-cyrus -c {path} after --failed"],
    ]
    plain = yaml.safe_load(init.render_borgmatic(sample, "/r", "/var/lib/borg-cyrus/patterns", config_mod.DEFAULT_PATH))
    assert [c["run"] for c in plain["commands"]] == [
        ["borg-cyrus before"],
        ["borg-cyrus after"],
        ["borg-cyrus after --failed"],
    ]
    assert "encryption_passcommand" not in plain


def test_dry_run_writes_nothing(tmp_path, imapd):
    bc, bm, work = tmp_path / "out" / "bc.yaml", tmp_path / "out" / "bm.yaml", tmp_path / "work"
    args = ["--repository", str(tmp_path / "repo"), "--encryption", "repokey-blake2"]
    args += ["--passphrase-file", str(tmp_path / "pass"), "--work-directory", str(work)]
    r = cli(
        "init", "-n", "--imapd-conf", str(imapd), "--borg-cyrus-config", str(bc), "--borgmatic-config", str(bm), *args
    )
    assert r.returncode == 0, r.stderr
    assert f"# would write {bc}" in r.stdout and f"# would write {bm}" in r.stdout
    assert f"borg-cyrus -c {bc} before" in r.stdout
    assert "config validate: valid" in r.stdout and "INVALID" not in r.stdout
    assert f"borgmatic -c {bm} repo-create --encryption repokey-blake2" in r.stdout
    assert not (tmp_path / "out").exists() and not work.exists() and not (tmp_path / "pass").exists()


def test_bad_input_is_one_line_and_writes_nothing(tmp_path, imapd):
    bc, bm = tmp_path / "bc.yaml", tmp_path / "bm.yaml"
    common = [
        "--borg-cyrus-config",
        str(bc),
        "--borgmatic-config",
        str(bm),
        "--repository",
        "/r",
        "--encryption",
        "none",
    ]
    r = cli("init", "--imapd-conf", str(tmp_path / "nope.conf"), *common)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "does not exist" in r.stderr
    r = cli("init", "--imapd-conf", str(tmp_path), *common)
    assert r.returncode == 2 and "not a readable file" in r.stderr
    r = cli("init", "--imapd-conf", str(imapd), "--borg-cyrus-config", str(bc), "--borgmatic-config", str(bm), input="")
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "--repository is missing" in r.stderr
    bm.write_text("keep me\n")
    r = cli("init", "--imapd-conf", str(imapd), *common)
    assert r.returncode == 2 and "exists; not replacing it (pass --force" in r.stderr
    assert not bc.exists() and bm.read_text() == "keep me\n"
    bad = tmp_path / "bad.conf"
    bad.write_text("configdirectory: relative\n")
    bm.unlink()
    r = cli("init", "--imapd-conf", str(bad), *common)
    assert r.returncode == 2 and r.stderr.count("\n") == 1
    assert not bc.exists() and not bm.exists()


def test_existing_borgmatic_config_gets_a_snippet(tmp_path, imapd, monkeypatch, capsys):
    existing = tmp_path / "config.yaml"
    existing.write_text("repositories:\n  - path: /srv/borg/main\nsource_directories: [/home]\n")
    monkeypatch.setattr(inspect_host, "BORGMATIC_LOOKUP", (str(existing),))
    monkeypatch.setattr(inspect_host.existing_borgmatic, "__defaults__", ((str(existing),),))
    assert inspect_host.repositories([str(existing)]) == [(str(existing), "/srv/borg/main")]
    bc = tmp_path / "bc.yaml"
    from borg_cyrus import cli as cli_mod

    argv = ["init", "-n", "--imapd-conf", str(imapd), "--borg-cyrus-config", str(bc), "--work-directory", "/var/lib/x"]
    assert cli_mod.main(argv) == 0
    out = capsys.readouterr().out
    assert f"borgmatic already has a config ({existing}): add these lines" in out
    assert f"run: [borg-cyrus -c {bc} before]" in out and "  - /var/lib/x/patterns" in out
    assert "(merged in a copy): valid" in out
    assert existing.read_text().startswith("repositories:") and not bc.exists()


def test_missing_values_are_asked_on_a_terminal(tmp_path, imapd, monkeypatch, capsys):
    """A fake terminal (stdin.isatty and input() replaced): an empty answer takes
    the offered default (the first repository of an existing borgmatic config),
    a choice outside the list is asked again."""
    existing = tmp_path / "config.yaml"
    existing.write_text("repositories:\n  - path: /srv/borg/main\n")
    monkeypatch.setattr(inspect_host.existing_borgmatic, "__defaults__", ((str(existing),),))
    answers = iter(["", "bogus", "none"])
    asked = []
    monkeypatch.setattr(init.sys, "stdin", type("Tty", (), {"isatty": lambda self: True})())
    monkeypatch.setattr("builtins.input", lambda prompt: asked.append(prompt) or next(answers))
    from borg_cyrus import cli as cli_mod

    bc, bm = tmp_path / "bc.yaml", tmp_path / "bm.yaml"
    argv = ["init", "-n", "--imapd-conf", str(imapd), "--borg-cyrus-config", str(bc), "--borgmatic-config", str(bm)]
    assert cli_mod.main(argv + ["--work-directory", str(tmp_path / "w")]) == 0
    out = capsys.readouterr().out
    assert asked[0] == "repository [/srv/borg/main]: " and asked[1].startswith("encryption (none, ")
    assert len(asked) == 3 and "- path: /srv/borg/main" in out and "encryption_passcommand" not in out
