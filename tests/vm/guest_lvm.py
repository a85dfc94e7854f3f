"""Guest side of the LVM boot (tests/vm/conftest.py) -- runs INSIDE the VM:
the harness itself seen from the guest, and a plain LVM snapshot of a mounted
XFS logical volume. (Not named test_*.py: a host run never collects it; it
also skips itself outside the VM.)"""

import json
import os
import subprocess
import sys


sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from vmharness import guest_only  # noqa: E402

pytestmark = [guest_only()]

LVM_SCRIPT = r'''
d=${VMH_DISKS%% *}
wipefs -a "$d"  # whatever a guest test before this one (random order) left on it
pvcreate -qffy "$d"; vgcreate -q vgt "$d"
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


def test_guest_sees_the_host_and_the_share():
    """What the host side checks (test_vm_harness.py): the caller's cwd and
    environment, root, the stock kernel, the venv; the share is writable; a
    write elsewhere stays in the guest."""
    share = os.environ["VMH_SHARE"]
    import borg_cyrus

    seen = {
        "guest": os.environ.get("VMH_GUEST"),
        "uid": os.getuid(),
        "kernel": os.uname().release,
        "token": os.environ.get("BCT_VM_TOKEN"),
        "cwd": os.getcwd(),
        "host_file": open(os.environ["BCT_VM_HOST_FILE"]).read(),
        "path": os.environ["PATH"],
        "prefix": sys.prefix,
        "package": borg_cyrus.__name__,
    }
    with open(os.environ["BCT_VM_HOST_FILE"] + ".guest-copy", "w") as f:
        f.write("scratch\n")  # on the tmpfs overlay: the host never sees it
    with open(os.path.join(share, "guest-seen.json"), "w") as f:
        json.dump(seen, f)
    print("to-stderr", file=sys.stderr)


def test_lvm_snapshot():
    r = subprocess.run(["bash", "-euo", "pipefail", "-c", LVM_SCRIPT], capture_output=True, text=True, timeout=600)
    out = r.stdout
    print(out, r.stderr)
    assert r.returncode == 0, r.stderr
    assert "origin=v2 snapshot=v1" in out
    assert "snapshot big intact" in out
    assert "snapshot has no later file" in out
    assert "snapshot is read-only" in out
    assert " snap data" in out  # lvs: snap's origin is data
    assert "lvs after lvremove: data\n" in out
    assert out.rstrip().endswith("LVM-OK")
