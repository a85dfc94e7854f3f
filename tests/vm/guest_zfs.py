"""Guest side of the ZFS boot (tests/vm/conftest.py) -- runs INSIDE the VM
with OpenZFS loaded: a plain ZFS snapshot of a dataset. (Not named
test_*.py: a host run never collects it; it also skips itself outside the VM.)"""

import os
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from vmharness import guest_only  # noqa: E402

pytestmark = [guest_only()]

ZFS_SCRIPT = r'''
d=${VMH_DISKS%% *}
wipefs -a "$d"  # whatever a guest test before this one (random order) left on it
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


def test_zfs_snapshot():
    r = subprocess.run(["bash", "-euo", "pipefail", "-c", ZFS_SCRIPT], capture_output=True, text=True, timeout=600)
    out = r.stdout
    print(out, r.stderr)
    assert r.returncode == 0, r.stderr
    assert "origin=v2 snapshot=v1" in out
    assert "snapshot big intact" in out
    assert "snapshot is read-only" in out
    assert "tank/data@s1\n" in out
    assert "snapshots left: 0" in out
    assert out.rstrip().endswith("ZFS-OK")
