"""The QEMU VM harness, proven for real: exit codes and output, host files and
the share, LVM snapshots, OpenZFS snapshots, and Cyrus on an XFS logical volume.

    .venv/bin/python -m pytest -v tests/vm/test_vm_harness.py

Every test boots a VM (~4-6 s of overhead each under TCG); the first ZFS run
builds the OpenZFS modules (~3-4 min, cached afterwards). Skipped only when the
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


def test_exit_code_output_host_files_and_share(tmp_path):
    token = "tok 'quoted' $x \"and\" spaces"
    (tmp_path / "hostfile").write_text("written on the host\n")
    share = tmp_path / "share"
    r = bash(
        r'''
        cat hostfile                                   # cwd is the caller's
        printf 'token=%s\n' "$TOKEN"                   # environment is the caller's
        echo "guest=$VMH_GUEST uid=$(id -u) kernel=$(uname -r)"
        echo "path=$PATH"
        python -c 'import sys, borg_cyrus; print("python", sys.prefix, borg_cyrus.__name__)'
        echo from-guest > "$VMH_SHARE/result.txt"      # the share is writable and persists
        echo scratch > hostfile.guest-copy             # elsewhere: a tmpfs overlay, discarded
        echo to-stderr >&2
        exit 42
    ''',
        cwd=tmp_path,
        share=share,
        disks=0,
        env=dict(os.environ, TOKEN=token),
    )
    assert r.returncode == 42
    assert "written on the host" in r.stdout
    assert f"token={token}\n" in r.stdout
    assert "guest=1 uid=0 kernel=" in r.stdout
    assert f"python {sys.prefix} borg_cyrus" in r.stdout  # the venv works in the guest
    assert "pyenv/shims" not in r.stdout  # shims replaced in PATH
    assert "to-stderr" in r.stderr and "to-stderr" not in r.stdout
    assert (share / "result.txt").read_text() == "from-guest\n"
    assert not (tmp_path / "hostfile.guest-copy").exists()  # host is untouched


def test_timeout_and_harness_failure(tmp_path):
    r = run(["sleep", "600"], disks=0, timeout=12)
    assert r.returncode == TIMEOUT_EXIT
    assert "timeout" in r.stderr
    r = run(["true"], disks=0, extra_args=["--mem", "not-a-number"])
    assert r.returncode == HARNESS_FAILURE


LVM_SCRIPT = r'''
d=${VMH_DISKS%% *}
pvcreate -qy "$d"; vgcreate -q vgt "$d"
lvcreate -qy -L 512M -n data vgt
mkfs.xfs -q -f /dev/vgt/data
mkdir -p /mnt/data /mnt/snap; mount /dev/vgt/data /mnt/data
echo v1 > /mnt/data/file; head -c 8M /dev/urandom > /mnt/data/big; sum1=$(md5sum < /mnt/data/big)
sync
s=$(date +%s.%N); lvcreate -qy -s -L 256M -n snap vgt/data; e=$(date +%s.%N)
echo "lvcreate -s took $(echo "$s $e" | awk '{printf "%.2f", $2 - $1}')s"
echo v2 > /mnt/data/file; rm /mnt/data/big; echo new > /mnt/data/after; sync
mount -o ro,nouuid /dev/vgt/snap /mnt/snap
echo "origin=$(cat /mnt/data/file) snapshot=$(cat /mnt/snap/file)"
[ "$(md5sum < /mnt/snap/big)" = "$sum1" ] && echo "snapshot big intact"
[ -e /mnt/snap/after ] || echo "snapshot has no later file"
touch /mnt/snap/x 2>/dev/null || echo "snapshot is read-only"
lvs --noheadings -o lv_name,origin vgt | tr -s ' '
umount /mnt/snap; lvremove -qy vgt/snap
echo "lvs after lvremove: $(lvs --noheadings -o lv_name vgt | tr -d ' ')"
umount /mnt/data; vgremove -qy vgt; pvremove -qy "$d"
echo LVM-OK
'''


def test_lvm_snapshot_in_vm():
    r = bash(LVM_SCRIPT, disks=1, disk_size="1G", timeout=600)
    assert r.returncode == 0
    out = r.stdout
    assert "origin=v2 snapshot=v1" in out
    assert "snapshot big intact" in out
    assert "snapshot has no later file" in out
    assert "snapshot is read-only" in out
    assert " snap data" in out  # lvs: snap's origin is data
    assert "lvs after lvremove: data\n" in out
    assert out.rstrip().endswith("LVM-OK")


ZFS_SCRIPT = r'''
d=${VMH_DISKS%% *}
echo "module $(cat /sys/module/zfs/version); $(zfs version | head -1)"
# no udev in the guest: a whole-disk vdev makes zpool wait for the partition
# links udev would create, so partition the disk and hand zpool the partition
printf 'n\np\n1\n\n\nw\n' | busybox fdisk "$d" >/dev/null
for i in $(seq 50); do [ -b "${d}1" ] && break; sleep 0.1; done
zpool create -f -o ashift=12 -O mountpoint=none tank "${d}1"
zfs create -o mountpoint=/tank/data tank/data
echo v1 > /tank/data/file; head -c 8M /dev/urandom > /tank/data/big; sum1=$(md5sum < /tank/data/big)
s=$(date +%s.%N); zfs snapshot tank/data@s1; e=$(date +%s.%N)
echo "zfs snapshot took $(echo "$s $e" | awk '{printf "%.2f", $2 - $1}')s"
echo v2 > /tank/data/file; rm /tank/data/big
mkdir -p /mnt/zsnap; mount -t zfs tank/data@s1 /mnt/zsnap
echo "origin=$(cat /tank/data/file) snapshot=$(cat /mnt/zsnap/file)"
[ "$(md5sum < /mnt/zsnap/big)" = "$sum1" ] && echo "snapshot big intact"
touch /mnt/zsnap/x 2>/dev/null || echo "snapshot is read-only"
zfs list -H -t snapshot -o name
umount /mnt/zsnap; zfs destroy tank/data@s1
echo "snapshots left: $(zfs list -H -t snapshot -o name | wc -l)"
zpool destroy tank
echo ZFS-OK
'''


def test_zfs_snapshot_in_vm():
    # the first run builds the OpenZFS modules (zfs-modules.sh, ~3-4 min)
    r = bash(ZFS_SCRIPT, zfs=True, disks=1, disk_size="1G", timeout=600)
    assert r.returncode == 0
    out = r.stdout
    assert "origin=v2 snapshot=v1" in out
    assert "snapshot big intact" in out
    assert "snapshot is read-only" in out
    assert "tank/data@s1\n" in out
    assert "snapshots left: 0" in out
    assert out.rstrip().endswith("ZFS-OK")


def test_cyrus_on_lvm_in_vm(tmp_path):
    """Cyrus with configdirectory + spool on an XFS LV, mail delivered, an LVM
    snapshot taken while master runs, borg --version from the venv -- all
    inside the VM, run as a pytest file there (the pattern the project uses)."""
    share = tmp_path / "share"
    t = time.monotonic()
    r = run(
        [sys.executable, "-m", "pytest", "-x", "-q", "-s", "-p", "no:cacheprovider", "tests/vm/guest_cyrus_lvm.py"],
        cwd=ROOT,
        disks=1,
        disk_size="2G",
        share=share,
        timeout=900,
    )
    wall = time.monotonic() - t
    assert r.returncode == 0
    assert "1 passed" in r.stdout
    assert "borg 1." in r.stdout
    timings = json.loads((share / "cyrus_lvm_timings.json").read_text())
    print(f"wall {wall:.1f}s; guest steps: {timings}")
