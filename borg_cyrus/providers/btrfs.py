"""Built-in plugin: mode `btrfs` — read-only btrfs subvolume snapshots.

The subvolume holding each location is found by walking up to inode 256 (a
subvolume root). Snapshots go to `.borg-cyrus-snapshots/` in the filesystem's
top level (subvolid=5), mounted privately under <mount_directory>/.btrfs/,
and each is mounted read-only with `subvol=` at <mount_directory>/<subvolume
path>. A btrfs snapshot is atomic, so no freeze is needed.
"""

import os

from borg_cyrus.providers import mounts
from borg_cyrus.errors import BorgCyrusError
from borg_cyrus.hookspecs import hookimpl
from borg_cyrus.providers.snapshot import MOUNT_OPTIONS, SnapshotMode, umount

SUBVOL_ROOT_INO = 256
SNAPDIR = ".borg-cyrus-snapshots"


class Btrfs(SnapshotMode):
    name = "btrfs"
    description = "read-only btrfs subvolume snapshots, mounted at a stable path"
    default_quiesce = "none"

    def volume(self, path, mount):
        if mount is None or mount.fstype != "btrfs":
            raise BorgCyrusError(f"is on {mount.fstype if mount else 'no filesystem'}, not btrfs")
        p = os.path.realpath(path)
        while True:
            if os.stat(p).st_ino == SUBVOL_ROOT_INO or p == mount.mountpoint:
                break
            p = os.path.dirname(p)
        # path of the subvolume inside the filesystem (mount.root is where the mount starts)
        rel = os.path.relpath(p, mount.mountpoint)
        inner = os.path.normpath(os.path.join(mount.root, "" if rel == "." else rel))
        return p, {"device": mount.source, "subvol": inner}

    def top(self, device):
        """Mount the filesystem's top level privately (idempotent)."""
        target = os.path.join(self.mount_dir, ".btrfs", os.path.basename(device))
        if not mounts.is_mountpoint(target):
            if not self.ctx.dry_run:
                os.makedirs(target, 0o700, exist_ok=True)
            self.ctx.run(["mount", "-t", "btrfs", "-o", "subvolid=5,nosuid,nodev,noexec", device, target])
        return target

    def create(self, vol, name):
        d = vol["detail"]
        top = self.top(d["device"])
        snapdir = os.path.join(top, SNAPDIR)
        if not self.ctx.dry_run:
            os.makedirs(snapdir, 0o700, exist_ok=True)
        self.ctx.run(["btrfs", "subvolume", "snapshot", "-r", vol["root"], os.path.join(snapdir, name)])
        return {"name": name, "device": d["device"], "subvol": f"/{SNAPDIR}/{name}"}

    def mount_snapshot(self, vol, snap, target):
        self.ctx.run(["mount", "-t", "btrfs", "-o", f"{MOUNT_OPTIONS},subvol={snap['subvol']}", snap["device"], target])

    def remove(self, snap):
        device = snap.get("device") or (snap.get("volume") or {}).get("detail", {}).get("device")
        if not device:
            return
        top = self.top(device)
        path = os.path.join(top, SNAPDIR, snap["name"])
        if os.path.isdir(path):
            self.ctx.run(["btrfs", "subvolume", "delete", "-c", path])
        umount(self.ctx.runner, top)

    def stale(self):
        lay = self.ctx.layout
        table = mounts.mounts()
        devices = []
        for path in [lay.configdirectory, lay.sievedir] + lay.all_partition_dirs():
            m = mounts.mount_of(path, table) if os.path.exists(path) else None
            if m and m.fstype == "btrfs" and m.source not in devices:
                devices.append(m.source)
        in_use = {m.root for m in table if m.fstype == "btrfs"}
        out = []
        for device in devices:
            top = self.top(device)
            snapdir = os.path.join(top, SNAPDIR)
            names = [n for n in os.listdir(snapdir) if n.startswith(self.name_prefix)] if os.path.isdir(snapdir) else []
            names = [n for n in names if f"/{SNAPDIR}/{n}" not in in_use]
            out.extend({"name": n, "device": device} for n in names)
            if not names:
                umount(self.ctx.runner, top)
        return out


@hookimpl
def modes():
    return [Btrfs]
