"""The shared VM boots (tests/vm/vmboot.py): one per kind of guest, both
started at once, for every host-side test of tests/vm/ in this run."""

import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from vmboot import Boots  # noqa: E402


@pytest.fixture(scope="session")
def vm_boots(request, tmp_path_factory):
    tr = request.config.pluginmanager.get_plugin("terminalreporter")

    def say(line):
        if tr is None:
            print(line)
        else:
            tr.ensure_newline()
            tr.write_line(line)

    return Boots(tmp_path_factory, say)


@pytest.fixture(scope="session")
def lvm_boot(vm_boots):
    return vm_boots.get("lvm")


@pytest.fixture(scope="session")
def zfs_boot(vm_boots):
    return vm_boots.get("zfs")
