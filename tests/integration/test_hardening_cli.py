"""Refused before anything changes, end to end as root: a partition at /, a
work directory inside Cyrus's data or world-writable, a run as non-root."""

import os
import stat
import subprocess

import pytest

from borg_cyrus import config
from support.common import BASE, cli, sandbox_config


def one_error(r):
    assert r.returncode != 0 and "Traceback" not in r.stderr, r.stderr
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("borg-cyrus: error: ")]
    assert len(errors) == 1, r.stderr
    return errors[0]


# -- the CLI end to end (needs root: it runs borg-cyrus as root and as nobody) ----------


@pytest.mark.needs_root
def test_partition_root_refused_and_nothing_changed(sandbox, base_dir):
    with open(sandbox.imapd_conf, "a") as f:
        f.write("partition-evil: /\n")
    work = os.path.join(base_dir, "work")
    cfg = sandbox_config(sandbox, base_dir)
    for verb in (("before",), ("-n", "restore", "full"), ("doctor",)):
        r = cli(*verb, config=cfg)
        assert r.returncode == 2 and "partition-evil: '/' is the system directory /" in one_error(r), verb
    assert not os.path.exists(work)
    assert sandbox.running()


@pytest.mark.needs_root
def test_work_directory_overlapping_cyrus_refused(sandbox, base_dir):
    cfg = sandbox_config(sandbox, base_dir, work_directory=os.path.join(sandbox.confdir, "borg-cyrus"))
    r = cli("before", config=cfg)
    assert r.returncode == 2 and "overlaps Cyrus's configdirectory" in one_error(r)
    assert not os.path.exists(os.path.join(sandbox.confdir, "borg-cyrus"))
    cfg = sandbox_config(sandbox, base_dir, work_directory=os.path.dirname(sandbox.partitions["default"]))
    r = cli("before", config=cfg)
    assert r.returncode == 2 and "overlaps Cyrus's" in one_error(r)


@pytest.mark.needs_root
def test_world_writable_work_directory_refused_not_chmodded(sandbox, base_dir):
    """A stand-in for /tmp (mode 1777) as work directory: refused, and its mode stays."""
    work = os.path.join(base_dir, "sharedtmp")
    os.mkdir(work)
    os.chmod(work, 0o1777)
    cfg = sandbox_config(sandbox, base_dir, work_directory=work)
    r = cli("before", config=cfg)
    assert r.returncode == 1 and "writable by others" in one_error(r)
    assert stat.S_IMODE(os.stat(work).st_mode) == 0o1777
    assert os.listdir(work) == []
    # owned by the cyrus user: refused too
    os.chmod(work, 0o755)
    os.chown(work, sandbox.uid, sandbox.gid)
    r = cli("before", config=cfg)
    assert r.returncode == 1 and "belongs to uid" in one_error(r)
    assert os.listdir(work) == []


@pytest.fixture(scope="module")
def python_for_nobody():
    """borg-cyrus and what its CLI imports, where `nobody` can read them (the
    checkout and its venv may sit below root's 0700 home)."""
    import shutil
    import site

    base = BASE + "-nobody-py"
    shutil.rmtree(base, ignore_errors=True)
    os.makedirs(base)
    os.chmod(base, 0o755)
    lib = os.path.join(base, "lib")
    os.makedirs(lib)
    shutil.copytree(
        os.path.dirname(os.path.abspath(config.__file__)),
        os.path.join(lib, "borg_cyrus"),
        ignore=shutil.ignore_patterns("__pycache__"),
    )
    for sp in filter(os.path.isdir, site.getsitepackages()):
        for name in os.listdir(sp):
            if name.lower().startswith(
                ("yaml", "_yaml", "jsonschema", "referencing", "rpds", "attr", "pluggy", "typing_extensions")
            ):
                src = os.path.join(sp, name)
                (shutil.copytree if os.path.isdir(src) else shutil.copy2)(src, os.path.join(lib, name))
    for dirpath, dirnames, filenames in os.walk(base):
        for n in dirnames:
            os.chmod(os.path.join(dirpath, n), 0o755)
        for n in filenames:
            os.chmod(os.path.join(dirpath, n), 0o644)
    yield lib
    shutil.rmtree(base, ignore_errors=True)


@pytest.mark.needs_root
@pytest.mark.parametrize("verb", [("before",), ("after",), ("doctor",), ("restore", "list"), ("verify",)])
def test_non_root_is_told_to_run_as_root(python_for_nobody, verb):
    cfg = os.path.join(os.path.dirname(python_for_nobody), "c.yaml")
    open(cfg, "w").close()
    os.chmod(cfg, 0o644)
    r = subprocess.run(
        [
            "setpriv",
            "--reuid",
            "nobody",
            "--regid",
            "nogroup",
            "--clear-groups",
            "/usr/bin/python3",
            "-m",
            "borg_cyrus",
            "-c",
            cfg,
            *verb,
        ],
        capture_output=True,
        text=True,
        cwd="/",
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": python_for_nobody, "LANG": "C.UTF-8"},
    )
    line = one_error(r)
    assert r.returncode == 2 and "must run as root" in line, r.stderr
