"""The QEMU VM harness, proven for real: exit codes and output, host files and
the share, LVM snapshots, OpenZFS snapshots, and Cyrus on an XFS logical volume.

    .venv/bin/python -m pytest -v tests/vm/test_vm_harness.py

The tests read the shared LVM and ZFS boots (tests/vm/vmboot.py); only the
timeout test boots its own VM. The first ZFS boot on a machine builds the
OpenZFS modules (~3-5 min, cached afterwards). Skipped only when the
VM cannot run at all here (not root, not x86-64 Linux, qemu not installable).
"""

import json
import os
import sys
import time

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from vmharness import HARNESS_FAILURE, ROOT, TIMEOUT_EXIT, run_in_vm, vm_unavailable_reason  # noqa: E402

pytestmark = [pytest.mark.vm]


@pytest.fixture(scope="module", autouse=True)
def vm():
    reason = vm_unavailable_reason()
    if reason:
        pytest.skip(f"QEMU VM cannot run here: {reason}")


def run(argv, **kw):
    t = time.monotonic()
    r = run_in_vm(argv, **kw)
    print(f"VM run took {time.monotonic() - t:.1f}s, rc={r.returncode}")
    print("--- stdout\n" + (r.stdout or "") + "--- stderr\n" + (r.stderr or ""))
    return r


def bash(script, **kw):
    return run(["bash", "-euo", "pipefail", "-c", script], **kw)


def test_exit_code_output_host_files_and_share(lvm_boot):
    """Proven by the shared LVM boot (tests/vm/conftest.py): the command's
    exit status, stdout and stderr apart, the caller's cwd, environment and
    files, root, the venv, the share writable, the host untouched."""
    import json

    from vmboot import PASSED_EXIT, TOKEN

    assert lvm_boot.rc == PASSED_EXIT and lvm_boot.pytest_rc == 0, lvm_boot.stdout[-4000:] + lvm_boot.stderr[-2000:]
    assert "to-stderr" in lvm_boot.stderr and "to-stderr" not in lvm_boot.stdout
    lvm_boot.check("tests/vm/guest_lvm.py::test_guest_sees_the_host_and_the_share")
    seen = json.load(open(os.path.join(lvm_boot.share, "guest-seen.json")))
    assert seen["host_file"] == "written on the host\n"
    assert seen["token"] == TOKEN
    assert seen["guest"] == "1" and seen["uid"] == 0 and seen["kernel"]
    assert seen["cwd"] == ROOT  # the caller's cwd
    assert seen["prefix"] == sys.prefix and seen["package"] == "borg_cyrus"  # the venv works in the guest
    assert "pyenv/shims" not in seen["path"]  # shims replaced in PATH
    host_file = os.path.join(os.path.dirname(lvm_boot.share), "hostfile")
    assert not os.path.exists(host_file + ".guest-copy")  # the host is untouched


def test_timeout_and_harness_failure(tmp_path):
    r = run(["sleep", "600"], disks=0, timeout=12)
    assert r.returncode == TIMEOUT_EXIT
    assert "timeout" in r.stderr
    r = run(["true"], disks=0, extra_args=["--mem", "not-a-number"])
    assert r.returncode == HARNESS_FAILURE


def test_lvm_snapshot_in_vm(lvm_boot):
    """A plain LVM snapshot of a mounted XFS LV (tests/vm/guest_lvm.py)."""
    lvm_boot.check("tests/vm/guest_lvm.py::test_lvm_snapshot")


def test_zfs_snapshot_in_vm(zfs_boot):
    """A plain ZFS snapshot (tests/vm/guest_zfs.py); the first run on a machine
    builds the OpenZFS modules (zfs-modules.sh, ~3-5 min)."""
    zfs_boot.check("tests/vm/guest_zfs.py::test_zfs_snapshot")


def test_cyrus_on_lvm_in_vm(lvm_boot):
    """Cyrus with configdirectory + spool on an XFS LV, mail delivered, an LVM
    snapshot taken while master runs, borg --version from the venv -- all
    inside the VM (tests/vm/guest_cyrus_lvm.py)."""
    lvm_boot.check("tests/vm/guest_cyrus_lvm.py::test_cyrus_on_lvm")
    timings = json.loads(open(os.path.join(lvm_boot.share, "cyrus_lvm_timings.json")).read())
    assert timings["borg"].startswith("borg 1."), timings
    print(f"guest steps: {timings}")
