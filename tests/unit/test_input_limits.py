"""Input that must be refused in one line, quickly, changing nothing: YAML
bombs, non-UTF-8 configs, special files, system directories as locations."""

import os
import time

import pytest

from borg_cyrus.restore import archive
from borg_cyrus import config
from borg_cyrus.cyrus import layout
from borg_cyrus.errors import ConfigError
from support.common import cli, write_config

BOMB = "".join(
    f"{c}: &{c} [{', '.join([f'*{p}'] * 9) if p else ', '.join(['lol'] * 9)}]\n"
    for p, c in zip([None, "a", "b", "c", "d", "e", "f", "g", "h"], "abcdefghi")
)


def _file(tmp_path, name, data, mode=0o600):
    p = tmp_path / name
    p.write_bytes(data if isinstance(data, bytes) else data.encode())
    p.chmod(mode)
    return str(p)


def one_error(r):
    assert r.returncode != 0 and "Traceback" not in r.stderr, r.stderr
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("borg-cyrus: error: ")]
    assert len(errors) == 1, r.stderr
    return errors[0]


# -- config files ------------------------------------------------------------------


def test_yaml_bomb_refused_fast(tmp_path):
    path = _file(tmp_path, "bomb.yaml", BOMB)
    t0 = time.monotonic()
    with pytest.raises(ConfigError, match="expands to more than"):
        config.load(path)
    assert time.monotonic() - t0 < 1
    for verb in (("config", "show"), ("config", "validate")):
        t0 = time.monotonic()
        r = cli(*verb, config=path)
        assert time.monotonic() - t0 < 2, verb
        assert r.returncode == 2 and "anchors and aliases" in one_error(r)


def test_self_referencing_alias_refused(tmp_path):
    with pytest.raises(ConfigError, match="expands to more than"):
        config.load(_file(tmp_path, "r.yaml", "extra_paths: &a [*a]\n"))


def test_non_utf8_config(tmp_path):
    path = _file(tmp_path, "latin1.yaml", "mode: live\n# caf\xe9\n".encode("latin-1"))
    r = cli("config", "validate", config=path)
    line = one_error(r)
    assert r.returncode == 2 and f"{path}, line 2: not UTF-8" in line and "0xe9" in line


def test_config_must_be_a_regular_file(tmp_path):
    r = cli("config", "show", config="/dev/zero")
    assert r.returncode == 2 and "character device, not a regular file" in one_error(r)
    fifo = str(tmp_path / "fifo.yaml")
    os.mkfifo(fifo, 0o600)
    t0 = time.monotonic()
    r = cli("config", "validate", config=fifo)
    assert time.monotonic() - t0 < 5 and r.returncode == 2 and "a FIFO" in one_error(r)


def test_huge_config_refused(tmp_path):
    path = _file(tmp_path, "big.yaml", "# x\n" * 400_000)
    with pytest.raises(ConfigError, match="larger than"):
        config.load(path)


@pytest.mark.parametrize(
    "value, why",
    [
        ("/", "system directory /"),
        ("/tmp", "system directory /tmp"),
        ("/etc", "system directory /etc"),
        ("/var/tmp", "system directory /var/tmp"),
        ("/proc/self", "inside /proc"),
    ],
)
def test_work_directory_system_dirs_refused(tmp_path, value, why):
    path = write_config(str(tmp_path / "c.yaml"), {"work_directory": value})
    with pytest.raises(ConfigError, match=why) as e:
        config.load(path)
    assert "work_directory" in str(e.value)


def test_mount_directory_symlink_to_system_dir_refused(tmp_path):
    os.symlink("/etc", tmp_path / "looks-harmless")
    path = write_config(
        str(tmp_path / "c.yaml"), {"mode": "btrfs", "snapshot": {"mount_directory": str(tmp_path / "looks-harmless")}}
    )
    from borg_cyrus.plugins import Plugins

    plugins = Plugins()
    schema = config.full_schema(plugins.config_schema_fragments(), plugins.modes())
    with pytest.raises(ConfigError, match=r"snapshot.mount_directory: .* resolves to the system directory /etc"):
        config.load(path, True, schema)


# -- imapd.conf ----------------------------------------------------------------------


def _imapd(tmp_path, extra):
    base = tmp_path / "cyrus"
    base.mkdir(exist_ok=True)
    text = f"configdirectory: {base}/conf\npartition-default: {base}/spool\nsievedir: {base}/sieve\n" + extra
    return _file(tmp_path, "imapd.conf", text, 0o644)


@pytest.mark.parametrize(
    "line, why",
    [
        ("partition-x: /\n", "partition-x: '/' is the system directory /"),
        ("partition-x: /var/spool/../../etc\n", "has a '..' component"),
        ("metapartition-default: /usr\n", "system directory /usr"),
        ("archivepartition-default: /sys/kernel\n", "inside /sys"),
        ("mboxlist_db_path: /etc/passwd\n", "in the system directory /etc"),
        ("mboxlist_db_path: /var/lib/cyrus/../../../etc/shadow\n", "has a '..' component"),
        ("proc_path: /tmp\n", "system directory /tmp"),
    ],
)
def test_dangerous_cyrus_locations_refused(tmp_path, line, why):
    conf = _imapd(tmp_path, line)
    with pytest.raises(ConfigError) as e:
        layout.discover(conf)
    assert why in str(e.value) and conf in str(e.value)


def test_configdirectory_root_refused(tmp_path):
    conf = _file(tmp_path, "imapd.conf", "configdirectory: /\npartition-default: /var/spool/x\n", 0o644)
    with pytest.raises(ConfigError, match="configdirectory"):
        layout.discover(conf)


def test_include_of_dev_zero_refused_fast(tmp_path):
    conf = _imapd(tmp_path, "@include: /dev/zero\n")
    t0 = time.monotonic()
    with pytest.raises(ConfigError, match="/dev/zero is a character device, not a regular file"):
        layout.discover(conf)
    assert time.monotonic() - t0 < 1
    fifo = str(tmp_path / "inc.fifo")
    os.mkfifo(fifo)
    with pytest.raises(ConfigError, match="is a FIFO"):
        layout.discover(_imapd(tmp_path, f"@include: {fifo}\n"))


def test_borg_crash_is_reported_by_its_last_line():
    tb = (
        b"Traceback (most recent call last):\n  File \"/x/borg/archiver.py\", line 5, in main\n"
        b"    raise PermissionError\nPermissionError: [Errno 13] Permission denied: '/root/.config/borg/security'\n"
    )
    assert archive._last_line(tb) == "PermissionError: [Errno 13] Permission denied: '/root/.config/borg/security'"
    words = " ".join(f"word{i}" for i in range(400))
    clipped = archive._clip(words, 100)
    assert clipped.startswith("…word") and clipped.endswith("word399") and len(clipped) <= 101
