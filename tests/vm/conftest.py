"""The shared VM boots (tests/vm/vmboot.py): one per kind of guest, for every
host-side test of tests/vm/ in this run."""

import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from vmboot import LVM_GUEST_TESTS, ZFS_GUEST_TESTS, boot  # noqa: E402


@pytest.fixture(scope="session")
def lvm_boot(tmp_path_factory):
    return boot(tmp_path_factory, "lvm", LVM_GUEST_TESTS, zfs=False)


@pytest.fixture(scope="session")
def zfs_boot(tmp_path_factory):
    return boot(tmp_path_factory, "zfs", ZFS_GUEST_TESTS, zfs=True)
