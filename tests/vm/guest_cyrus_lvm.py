"""Guest side of test_vm_harness.py::test_cyrus_on_lvm_in_vm -- runs INSIDE the VM (the LVM boot).

    tests/vm/run-in-vm.sh --disks 1 -- .venv/bin/python -m pytest -q tests/vm/guest_cyrus_lvm.py

A real Cyrus server whose configdirectory and spool live on an XFS logical
volume, mail delivered over LMTP, an LVM snapshot taken while master runs, and
the project's borg. Step timings go to $VMH_SHARE/cyrus_lvm_timings.json.
(Not named test_*.py so that a host-side pytest run never collects it; it also
skips itself outside the VM.)
"""

import json
import os
import subprocess
import sys
import time

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from vmharness import guest_only  # noqa: E402

pytestmark = [guest_only()]

VG, LV, MNT, SNAPMNT = "vgmail", "mail", "/srv/mail", "/mnt/mailsnap"
T = {}


def sh(*argv):
    r = subprocess.run(argv, capture_output=True, text=True)
    assert r.returncode == 0, f"{' '.join(argv)} -> {r.returncode}\n{r.stdout}{r.stderr}"
    return r.stdout


class timed:
    def __init__(self, name):
        self.name = name

    def __enter__(self):
        self.t = time.monotonic()

    def __exit__(self, *exc):
        T[self.name] = round(time.monotonic() - self.t, 2)


@pytest.fixture
def mail_lv():
    disk = os.environ["VMH_DISKS"].split()[0]
    with timed("lvm_setup_mkfs_mount"):
        sh("wipefs", "-a", disk)  # whatever a guest test before this one (random order) left on it
        sh("pvcreate", "-qffy", disk)
        sh("vgcreate", "-q", VG, disk)
        sh("lvcreate", "-qy", "-L", "1G", "-n", LV, VG)
        sh("mkfs.xfs", "-q", "-f", f"/dev/{VG}/{LV}")
        os.makedirs(MNT, exist_ok=True)
        sh("mount", f"/dev/{VG}/{LV}", MNT)
    yield f"/dev/{VG}/{LV}"
    subprocess.run(["umount", SNAPMNT], capture_output=True)
    subprocess.run(["umount", MNT], capture_output=True)
    subprocess.run(["vgremove", "-qff", VG], capture_output=True)
    subprocess.run(["pvremove", "-qffy", disk], capture_output=True)
    share = os.environ.get("VMH_SHARE")
    if share:
        with open(os.path.join(share, "cyrus_lvm_timings.json"), "w") as f:
            json.dump(T, f, indent=1)
    print("guest timings:", json.dumps(T))


def test_cyrus_on_lvm(mail_lv):
    from borg_cyrus.cyrus.sandbox import Sandbox

    t0 = time.monotonic()
    layout = {"configdirectory": f"{MNT}/conf", "partition-default": f"{MNT}/spool"}
    sb = Sandbox("/tmp/vmcyrus", layout=layout)
    try:
        with timed("cyrus_create_start"):
            sb.create().start()
        with timed("imap_create_deliver"):
            imap = sb.imap("cyrus")
            typ, _ = imap.create("user/alice")
            assert typ == "OK"
            imap.logout()
            sb.deliver("alice", b"Subject: x\r\n\r\nbody\r\n")
            alice = sb.imap("alice")
            typ, data = alice.select("INBOX", readonly=True)
            assert typ == "OK" and int(data[0]) == 1, data
            alice.logout()
        # the mailbox database and the message file really are on the LV
        lv_dev = os.stat(MNT).st_dev
        assert os.stat(f"{MNT}/conf").st_dev == lv_dev
        msgs = [os.path.join(d, f) for d, _, fs in os.walk(f"{MNT}/spool") for f in fs if f == "1."]
        assert len(msgs) == 1, msgs
        assert os.stat(msgs[0]).st_dev == lv_dev
        assert open(msgs[0], "rb").read().endswith(b"body\r\n")
        assert any(f.startswith("mailboxes.db") for f in os.listdir(f"{MNT}/conf"))

        # snapshot while master runs; the snapshot holds the delivered message
        with timed("lvcreate_snapshot"):
            sh("lvcreate", "-qy", "-s", "-L", "256M", "-n", "mailsnap", f"{VG}/{LV}")
        os.makedirs(SNAPMNT, exist_ok=True)
        sh("mount", "-o", "ro,nouuid", f"/dev/{VG}/mailsnap", SNAPMNT)
        assert os.path.exists(msgs[0].replace(MNT, SNAPMNT, 1))
        sh("umount", SNAPMNT)
        sh("lvremove", "-qy", f"{VG}/mailsnap")
        assert sb.running()
    finally:
        with timed("cyrus_stop"):
            sb.stop()
    assert not sb.running()

    borg = os.path.join(os.path.dirname(sys.executable), "borg")
    with timed("borg_version"):
        out = sh(borg, "--version")
    assert out.startswith("borg "), out
    print(out.strip())
    T["borg"] = out.strip()
    T["test_total"] = round(time.monotonic() - t0, 2)
