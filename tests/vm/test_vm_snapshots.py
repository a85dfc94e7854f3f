"""LVM and ZFS snapshot modes, for real, inside the QEMU VM harness: the
snapshot tests of test_snapshots.py (backup through borgmatic + restore
IMAP-identically, point-in-time dumps, a message moved during the backup,
LVM overflow) run in the shared LVM and ZFS boots (tests/vm/vmboot.py); each
test here checks that one of them ran there and passed."""

import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from vmboot import LVM_GUEST_TESTS, SNAP, ZFS_GUEST_TESTS  # noqa: E402

pytestmark = [pytest.mark.vm, pytest.mark.slow]


def _ids(tests):
    return [t for t in tests if t.startswith(SNAP)]


@pytest.mark.parametrize("nodeid", _ids(LVM_GUEST_TESTS), ids=lambda t: t.split("::")[1])
def test_lvm_snapshots_in_vm(lvm_boot, nodeid):
    lvm_boot.check(nodeid)


@pytest.mark.parametrize("nodeid", _ids(ZFS_GUEST_TESTS), ids=lambda t: t.split("::")[1])
def test_zfs_snapshots_in_vm(zfs_boot, nodeid):
    zfs_boot.check(nodeid)


def test_every_guest_test_ran(lvm_boot, zfs_boot):
    """Each boot ran exactly the tests it was given, none skipped, and its pytest passed."""
    for b, tests in ((lvm_boot, LVM_GUEST_TESTS), (zfs_boot, ZFS_GUEST_TESTS)):
        assert sorted(b.outcomes) == sorted(tests), (sorted(b.outcomes), b.stdout[-3000:])
        assert b.pytest_rc == 0, b.stdout[-6000:]
