"""Cyrus 3.10 (Debian 13): a 3.6 archive restored onto Debian's cyrus-imapd
3.10 in a Debian 13 root (tests/support/trixieroot.py, built once and
cached), full server, one user, one folder; the root's own test suite run
on 3.10 (backup and restore through borgmatic); and a 3.10 archive refused
by a 3.6 server.

The root shares this host's kernel and loopback network: the host's test
reads the root's Cyrus over IMAP and ManageSieve with the same client code
that read the 3.6 server before the backup.
"""

import json
import os
import shutil
import types

import pytest

from borg_cyrus.cyrus.sandbox import Sandbox, free_port
from borg_cyrus.tools.demo import populate
from support.common import ROOT, cli, sandbox_config
from support.helpers import borgmatic_config, expected, latest_archive, snapshot
from support.restore_helpers import backup

pytestmark = [pytest.mark.needs_root, pytest.mark.slow]

# run inside the root: the same tests as on 3.6 (backup and restore through borgmatic, one user, one
# folder, single messages (3.10's cyrus.index v19, Xapian), other backends)
SUITE_ON_310 = [
    "tests/integration/test_e2e.py",
    "tests/integration/test_restore_user.py",
    "tests/integration/test_restore_mailbox.py",
    "tests/integration/test_restore_messages.py",
    "tests/integration/test_restore_inplace.py",
    "tests/integration/test_restore_paths.py",
    "tests/integration/test_verify.py",
    "tests/integration/test_hourly.py",
    "tests/integration/test_backends.py",
    "tests/integration/test_databases_dump.py",
    "tests/integration/test_dbreaders_cyrus.py",
]


@pytest.fixture(scope="module")
def trixie():
    from support.trixieroot import TrixieRoot

    with TrixieRoot(ROOT) as root:
        yield root


def inroot(root, spec_path, action, arg=None, timeout=900):
    from support.cleanroom import PROJECT
    from support.trixieroot import VENV

    argv = [f"{VENV}/bin/python", "tests/support/inroot.py", spec_path, action] + ([arg] if arg else [])
    r = root.run(argv, cwd=PROJECT, timeout=timeout)
    return json.loads(r.stdout.strip().splitlines()[-1])


def copy_in(root, path):
    dest = root.path(path)
    os.makedirs(os.path.dirname(dest), exist_ok=True)
    if os.path.isdir(path):
        shutil.copytree(path, dest, symlinks=True)
    else:
        shutil.copy2(path, dest)


def test_36_archive_restored_onto_310(base_dir, trixie):
    sb = Sandbox(os.path.join(base_dir, "cyrus"), partitions=("default", "second")).create().start()
    try:
        populate(sb, managesieve=True)
        before = snapshot(sb)
        b = backup(sb, base_dir, mode="stop-master", exclude={"mailboxes": ["user/*/Junk"]})
    finally:
        sb.stop()
    assert "3.6" in b["manifest"]["cyrus_version"], b["manifest"]["cyrus_version"]

    # the new host: only the configs and the repository (as if on its own disk)
    for p in (b["bc"], b["bm"], b["repo"]):
        copy_in(trixie, p)
    os.makedirs(trixie.path(b["work"]), exist_ok=True)
    spec = {
        "base": sb.base,
        "partitions": ["default", "second"],
        "port": free_port(),
        "sieve_port": free_port(),
        "repo": b["repo"],
        "bc": b["bc"],
        "bm": b["bm"],
    }
    spec_path = os.path.join(base_dir, "spec.json")
    with open(trixie.path(spec_path), "w") as f:
        json.dump(spec, f)
    view = types.SimpleNamespace(port=spec["port"], sieve_port=spec["sieve_port"])
    try:
        r = inroot(trixie, spec_path, "restore-full", latest_archive(b["repo"]))
        report = r["stderr"]
        print(report)
        assert r["rc"] == 0, report
        assert "Cyrus 3.6" in report and "-> 3.10" in report, report
        assert "reconstruct -V max" in report, report
        after = snapshot(view)
        # what 3.10 changes by design: nothing a client sees (UIDVALIDITY, UIDs, flags, bytes kept)
        assert after == expected(before, b["manifest"])

        r = inroot(trixie, spec_path, "restore-user", "alice")
        assert r["rc"] == 0, r["stdout"] + r["stderr"]
        assert "reconstruct -V max" in r["stdout"], r["stdout"]
        assert snapshot(view) == after

        r = inroot(trixie, spec_path, "restore-mailbox", "user/bob/Archive 2019")
        assert r["rc"] == 0, r["stdout"] + r["stderr"]
        assert snapshot(view) == after
    finally:
        inroot(trixie, spec_path, "stop")


def test_310_archive_refused_by_36(base_dir, trixie, sandbox):
    """A backup made on 3.10 (through borgmatic, in the root) is not restored onto 3.6."""
    base = os.path.join(base_dir, "on310")
    spec = {
        "base": os.path.join(base, "cyrus"),
        "partitions": ["default", "second"],
        "port": free_port(),
        "sieve_port": free_port(),
        "repo": os.path.join(base, "repo"),
        "work": os.path.join(base, "work"),
        "bc": os.path.join(base, "borg-cyrus.yaml"),
    }
    os.makedirs(trixie.path(base), exist_ok=True)
    with open(trixie.path(os.path.join(base, "spec.json")), "w") as f:
        json.dump(spec, f)
    # the borg-cyrus config of that server, written here as for any sandbox
    os.makedirs(base)
    probe = Sandbox(spec["base"], partitions=("default", "second"), port=spec["port"])
    host_bc = sandbox_config(probe, base, mode="stop-master")
    copy_in(trixie, host_bc)
    try:
        r = inroot(trixie, os.path.join(base, "spec.json"), "backup")
        assert r["rc"] == 0, r["stdout"] + r["stderr"]
    finally:
        inroot(trixie, os.path.join(base, "spec.json"), "stop")
    repo = trixie.path(spec["repo"])
    bm = borgmatic_config(base_dir, repo, os.path.join(base_dir, "work", "patterns"))
    bc = sandbox_config(sandbox, base_dir, mode="stop-master")
    r = cli("restore", "user", "alice", "--borgmatic-config", bm, config=bc, check=1)
    errors = [ln for ln in r.stderr.splitlines() if "error:" in ln]
    assert len(errors) == 1 and "older 3.6" in errors[0] and "Cyrus 3.10" in errors[0], r.stderr
    a = sandbox.imap("cyrus")
    _typ, listed = a.list('""', "*")
    a.logout()
    assert not any(b"alice" in (d or b"") for d in listed), listed  # nothing restored
    r = cli("restore", "user", "alice", "--force", "--borgmatic-config", bm, config=bc, check=1)
    assert "older 3.6" in r.stderr


def test_suite_on_310(trixie):
    """The backup and restore tests, run inside the root against Cyrus 3.10."""
    # spread over xdist workers as on the host (they wait on Cyrus and borg more than on the CPU)
    r = trixie.pytest("-q", "-n", "3", "--dist", "loadfile", *SUITE_ON_310, timeout=1800)
    print(r.stdout[-3000:])
    assert r.returncode == 0, r.stdout[-6000:]
    assert " passed" in r.stdout and " failed" not in r.stdout
