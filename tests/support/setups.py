"""A Cyrus whose data lives on a volume a snapshot provider can snapshot (btrfs,
XFS in an image on btrfs, LVM and ZFS in the VM, a plain directory for
rsync-staging), and the borg-cyrus config for it."""

import os
import subprocess
import time

from borg_cyrus.cyrus.sandbox import Sandbox
from borg_cyrus.providers import mounts
from support.common import BASE, write_config
from support.fsimages import LoopFs, is_frozen, sh, unmount_below
from support.helpers import wipe


class Setup:
    """A Cyrus whose configdirectory, partitions and sievedir live on the
    volume a provider snapshots, and the borg-cyrus config for it."""

    def __init__(self, base, provider, tmpfs=False):
        self.base, self.provider = base, provider
        tag = f"{os.path.basename(BASE)}-{os.path.basename(base)}"  # image names unique per run and worker
        self.work = os.path.join(base, "work")
        self.fs = []
        mnt = os.path.join(base, "mnt")
        if provider in ("btrfs", "btrfs-2fs"):
            self.fs.append(LoopFs(f"btrfs-{tag}", "btrfs").make(mnt))
            sh("btrfs", "subvolume", "create", os.path.join(mnt, "cyrus"))
            data = os.path.join(mnt, "cyrus")
            self.mode = {"mode": "btrfs"}
        elif provider == "command-xfs":
            store = os.path.join(base, "store")
            # the XFS image lives on a btrfs, so a reflink copy of it is an instant block-level snapshot
            self.fs.append(LoopFs(f"store-{tag}", "btrfs").make(store))
            xfs = LoopFs("xfs", "xfs", size="512M", image_dir=store).make(mnt)
            self.fs.append(xfs)
            snaps = os.path.join(store, "snaps")
            os.makedirs(snaps)
            data = mnt
            self.snaps = snaps
            self.mode = {
                "mode": "command",
                "command_snapshot": {
                    "create": ["cp", "--reflink=always", xfs.image, f"{snaps}/{{name}}"],
                    # a writable loop device lets XFS replay its log into the copy; the filesystem is mounted ro
                    "mount": [
                        "sh",
                        "-c",
                        'mount -t xfs -o ro,nosuid,nodev,noexec,nouuid "$(losetup --find --show "$0")" "$1"',
                        f"{snaps}/{{name}}",
                        "{target}",
                    ],
                    "remove": [
                        "sh",
                        "-c",
                        'for l in $(losetup -j "$0" -O NAME -n); do losetup -d "$l"; done; rm -f "$0"',
                        f"{snaps}/{{name}}",
                    ],
                    "list": ["ls", snaps],
                },
            }
        elif provider == "lvm-xfs":
            self.disk = os.environ["VMH_DISKS"].split()[0]
            sh("wipefs", "-a", self.disk)
            sh("pvcreate", "-ff", "-y", self.disk)
            sh("vgcreate", "bctvg", self.disk)
            sh("lvcreate", "-y", "-L", "400M", "-n", "cyrus", "bctvg")
            sh("mkfs.xfs", "-q", "-f", "/dev/bctvg/cyrus")
            os.makedirs(mnt)
            sh("mount", "/dev/bctvg/cyrus", mnt)
            data = mnt
            self.mode = {"mode": "lvm", "lvm": {"snapshot_size": "50%ORIGIN"}}
        elif provider == "zfs":
            self.disk = os.environ["VMH_DISKS"].split()[0]
            sh("wipefs", "-a", self.disk)
            subprocess.run(["sfdisk", "-q", self.disk], input=",,\n", text=True, check=True, capture_output=True)
            part = self.disk + "1"
            for _ in range(50):
                if os.path.exists(part):
                    break
                time.sleep(0.1)
            sh("zpool", "create", "-f", "-m", "none", "bctpool", part)
            sh("zfs", "create", "-o", f"mountpoint={mnt}", "bctpool/cyrus")
            data = mnt
            self.mode = {"mode": "zfs"}
        else:
            data = os.path.join(base, "data")
            os.makedirs(data)
            if tmpfs:
                # tmpfs numbers inodes in creation order, and borg reads a directory in inode order
                sh("mount", "-t", "tmpfs", "-o", "size=512m", "bct-data", data)
            self.mode = {"mode": "rsync-staging"}
        os.chmod(data, 0o755)
        self.data = data
        self.mnt = mnt
        self.layout = {
            "configdirectory": f"{data}/conf",
            "partition-default": f"{data}/spool-default",
            "partition-second": f"{data}/spool-second",
            "sievedir": f"{data}/sieve",
        }
        if provider == "btrfs-2fs":
            # the second partition on another btrfs: two snapshots in one window
            mnt2 = os.path.join(base, "mnt2")
            self.fs.append(LoopFs(f"btrfs2-{tag}", "btrfs").make(mnt2))
            self.layout["partition-second"] = f"{mnt2}/spool-second"
            self.mnt2 = mnt2
        self.sb = Sandbox(os.path.join(base, "cyrus"), partitions=("default", "second"), layout=self.layout)

    def config(self, **extra):
        cfg = {
            "imapd_conf": self.sb.imapd_conf,
            "cyrus_conf": self.sb.cyrus_conf,
            "work_directory": self.work,
            "service": self.sb.borg_cyrus_service(),
            "exclude": {"mailboxes": ["user/*/Junk"]},
        }
        cfg.update(self.mode)
        for k, v in extra.items():
            if isinstance(v, dict) and isinstance(cfg.get(k), dict):
                cfg[k] = {**cfg[k], **v}
            else:
                cfg[k] = v
        return write_config(os.path.join(self.base, "borg-cyrus.yaml"), cfg)

    def read_root(self):
        """Where borg reads the data during a backup."""
        if self.provider == "rsync-staging":
            return os.path.join(self.work, "staging")
        return os.path.join(self.work, "snapshots")

    def leftovers(self):
        """Snapshots, mounts or frozen filesystems a run left behind."""
        out = list(mounts.mounted_under(self.read_root())) if os.path.isdir(self.read_root()) else []
        if self.provider.startswith("btrfs"):
            for m in [self.mnt] + ([self.mnt2] if self.provider == "btrfs-2fs" else []):
                lst = sh("btrfs", "subvolume", "list", m)
                out += [ln for ln in lst.splitlines() if "borg-cyrus-" in ln]
        if self.provider == "command-xfs":
            out += os.listdir(self.snaps)
        if self.provider == "lvm-xfs":
            out += [ln for ln in sh("lvs", "--noheadings", "-o", "lv_name").split() if ln.startswith("borg-cyrus-")]
        if self.provider == "zfs":
            out += [
                ln for ln in sh("zfs", "list", "-H", "-t", "snapshot", "-o", "name").split() if "@borg-cyrus-" in ln
            ]
        if any(is_frozen(fs.mountpoint) for fs in self.fs):
            out.append("a frozen filesystem")
        return out

    def wipe(self):
        """Lose the server: its files and everything on the data volume(s)."""
        wipe(self.sb)
        for d in [self.data] + ([self.mnt2] if self.provider == "btrfs-2fs" else []):
            for name in os.listdir(d):
                subprocess.run(["rm", "-rf", os.path.join(d, name)], check=True)

    def destroy(self):
        self.sb.stop()
        unmount_below(self.base)
        for fs in reversed(self.fs):
            fs.destroy()
        if self.provider == "lvm-xfs":
            subprocess.run(["vgremove", "-f", "bctvg"], capture_output=True)
            subprocess.run(["pvremove", "-ff", "-y", self.disk], capture_output=True)
        if self.provider == "zfs":
            subprocess.run(["zpool", "destroy", "-f", "bctpool"], capture_output=True)
