"""One VM boot per kind of guest (the fixtures are in tests/vm/conftest.py).

Booting costs seconds, but a Python start under TCG costs several, so each
kind of guest runs one pytest over all its guest-side tests: the LVM boot
(XFS on LVM: the harness seen from the guest, a plain LVM snapshot, Cyrus on
an LV, and the LVM cases of tests/integration/test_snapshots.py) and the ZFS
boot (OpenZFS loaded: a plain ZFS snapshot and the ZFS cases). The host-side
tests read the guest's JUnit report and the files it left in the share.
"""

import os
import sys
import threading
import time
import xml.etree.ElementTree as ET

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from vmharness import ROOT, run_in_vm, vm_unavailable_reason  # noqa: E402

SNAP = "tests/integration/test_snapshots.py"
LVM_GUEST_TESTS = [
    "tests/vm/guest_lvm.py::test_guest_sees_the_host_and_the_share",
    "tests/vm/guest_lvm.py::test_lvm_snapshot",
    "tests/vm/guest_cyrus_lvm.py::test_cyrus_on_lvm",
    f"{SNAP}::test_backup_through_snapshot_restores_identically[lvm-xfs]",
    f"{SNAP}::test_dumps_describe_the_snapshot_instant[lvm-xfs]",
    f"{SNAP}::test_message_moved_during_backup[lvm-xfs]",
    f"{SNAP}::test_lvm_snapshot_overflow_fails_the_backup",
]
ZFS_GUEST_TESTS = [
    "tests/vm/guest_zfs.py::test_zfs_snapshot",
    f"{SNAP}::test_backup_through_snapshot_restores_identically[zfs]",
    f"{SNAP}::test_dumps_describe_the_snapshot_instant[zfs]",
    f"{SNAP}::test_message_moved_during_backup[zfs]",
]
# what the guest command exits with when its pytest passed: a code the host
# must see as it is (the harness passes the command's exit status through)
PASSED_EXIT = 42
TOKEN = "tok 'quoted' $x \"and\" spaces"


class Boot:
    """The outcome of one boot: exit code, output, each guest test's outcome."""

    def __init__(self, r, share, wall):
        self.rc, self.stdout, self.stderr, self.share, self.wall = r.returncode, r.stdout, r.stderr, share, wall
        self.outcomes, self.reports = {}, {}
        junit = os.path.join(share, "junit.xml")
        if os.path.exists(junit):
            for case in ET.parse(junit).getroot().iter("testcase"):
                nodeid = case.get("classname").replace(".", "/") + ".py::" + case.get("name")
                outcome = "passed"
                for child in case:
                    if child.tag in ("failure", "error", "skipped"):
                        outcome = child.tag
                        self.reports[nodeid] = (child.get("message") or "") + "\n" + (child.text or "")
                self.outcomes[nodeid] = outcome
        rc_file = os.path.join(share, "pytest.rc")
        self.pytest_rc = int(open(rc_file).read()) if os.path.exists(rc_file) else None

    def check(self, nodeid):
        """Assert that the guest ran nodeid and it passed."""
        assert self.rc not in (124, 125), f"the VM failed (rc {self.rc}):\n{self.stderr[-4000:]}"
        assert nodeid in self.outcomes, f"the guest did not run {nodeid}:\n{self.stdout[-4000:]}"
        assert self.outcomes[nodeid] == "passed", f"{nodeid}: {self.outcomes[nodeid]}\n{self.reports.get(nodeid)}"


def guest_environ(**extra):
    """This process's environment for the guest, without the host run's lane
    bookkeeping (the guest's writes outside the share are discarded anyway).
    The guest may cache bytecode (in its RAM overlay): a Python start under
    TCG costs seconds, compiling its modules a good part of it."""
    drop = ("BORG_CYRUS_TIMINGS", "BORG_CYRUS_LANE", "PYTHONDONTWRITEBYTECODE")
    env = {k: v for k, v in os.environ.items() if k not in drop}
    return {**env, **extra}


def compile_project():
    """Bytecode for the project's own modules, written on the host once, which
    every Python process in the guests then reads instead of compiling."""
    import compileall

    for d in ("borg_cyrus", "tests"):
        compileall.compile_dir(os.path.join(ROOT, d), quiet=1)


def start(tmp_path_factory, name, tests, zfs):
    """Start one boot in a thread; `.result()` waits for its Boot."""
    host = tmp_path_factory.mktemp(f"{name}-host")
    share = host / "share"
    host_file = host / "hostfile"
    host_file.write_text("written on the host\n")
    guest_pytest = [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", "-p", "no:xdist"]
    script = (
        'echo to-stderr >&2; "$@" --junitxml="$VMH_SHARE/junit.xml"; rc=$?; '
        f'echo $rc > "$VMH_SHARE/pytest.rc"; [ $rc = 0 ] && exit {PASSED_EXIT}; exit $rc'
    )
    smp = os.environ.get("BORG_CYRUS_VM_SMP")  # vCPUs of each boot (the harness's default: 2)
    out = {}

    def run():
        t = time.monotonic()
        try:
            r = run_in_vm(
                ["bash", "-c", script, "guest", *guest_pytest, *tests],
                disks=1,
                disk_size="2G",
                zfs=zfs,
                share=share,
                timeout=3000,
                smp=int(smp) if smp else None,
                env=guest_environ(BCT_VM_TOKEN=TOKEN, BCT_VM_HOST_FILE=str(host_file)),
            )
            out["boot"] = Boot(r, str(share), time.monotonic() - t)
        except BaseException as e:  # handed to the test that asks
            out["error"] = e

    thread = threading.Thread(target=run, name=f"vm-{name}", daemon=True)
    thread.start()

    class Pending:
        def result(self):
            thread.join()
            if "error" in out:
                raise out["error"]
            return out["boot"]

    return Pending()


class Boots:
    """Both boots, started at once: under TCG a guest running one pytest keeps
    about one of the two cores busy, so two guests side by side take little
    longer than one."""

    def __init__(self, tmp_path_factory, say=print):
        reason = vm_unavailable_reason()
        if reason:
            pytest.skip(f"QEMU VM cannot run here: {reason}")
        self.say = say
        self.t0 = time.monotonic()
        compile_project()
        self.pending = {
            "lvm": start(tmp_path_factory, "lvm", LVM_GUEST_TESTS, zfs=False),
            "zfs": start(tmp_path_factory, "zfs", ZFS_GUEST_TESTS, zfs=True),
        }
        self.done = {}

    def get(self, name):
        if name not in self.done:
            b = self.done[name] = self.pending[name].result()
            self.say(f"{name} boot: exit {b.rc}, guest pytest exit {b.pytest_rc}, {b.wall:.0f} s")
        return self.done[name]
