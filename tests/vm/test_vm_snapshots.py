"""LVM and ZFS snapshot modes, for real, inside the QEMU VM harness: the
snapshot tests of test_snapshots.py (backup through borgmatic + restore
IMAP-identically, point-in-time dumps, a message moved during the backup,
LVM overflow) run in a VM with device-mapper / OpenZFS."""

import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from vmharness import run_in_vm, vm_unavailable_reason  # noqa: E402

pytestmark = [pytest.mark.vm, pytest.mark.slow]


def _run(selector, zfs=False):
    reason = vm_unavailable_reason()
    if reason:
        pytest.skip(reason)
    r = run_in_vm(
        [
            sys.executable,
            "-m",
            "pytest",
            "-x",
            "-q",
            "-rs",
            "-p",
            "no:cacheprovider",
            "tests/integration/test_snapshots.py",
            "-k",
            selector,
        ],
        disks=1,
        disk_size="2G",
        zfs=zfs,
        timeout=3000,
    )
    print(r.stdout[-6000:])
    assert r.returncode == 0, r.stdout[-8000:] + r.stderr[-4000:]
    assert " passed" in r.stdout and "skipped" not in r.stdout.split("passed")[0][-30:]


def test_lvm_snapshots_in_vm():
    _run("lvm")


def test_zfs_snapshots_in_vm():
    _run("zfs", zfs=True)
