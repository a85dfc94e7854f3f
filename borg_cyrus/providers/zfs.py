"""Built-in plugin: mode `zfs` — ZFS snapshots, mounted read-only.

`zfs snapshot` is atomic per dataset and needs no freeze. The snapshot is
mounted with `mount -t zfs dataset@snap` at a stable path (the
`.zfs/snapshot` automount path changes with the name and is not always
available).
"""

from borg_cyrus.errors import BorgCyrusError, CommandError
from borg_cyrus.hookspecs import hookimpl
from borg_cyrus.providers.snapshot import MOUNT_OPTIONS, SnapshotMode


class Zfs(SnapshotMode):
    name = "zfs"
    description = "ZFS snapshots, mounted read-only at a stable path"
    default_quiesce = "none"

    def volume(self, path, mount):
        if mount is None or mount.fstype != "zfs":
            raise BorgCyrusError(f"is on {mount.fstype if mount else 'no filesystem'}, not ZFS")
        return mount.mountpoint, {"dataset": mount.source}

    def _exists(self, snapshot):
        r = self.ctx.run(["zfs", "list", "-H", "-t", "snapshot", "-o", "name", snapshot], changes=False, check=False)
        return r.returncode == 0

    def create(self, vol, name):
        ds = vol["detail"]["dataset"]
        self.ctx.run(["zfs", "snapshot", f"{ds}@{name}"], timeout=300)
        return {"name": name, "dataset": ds, "snapshot": f"{ds}@{name}"}

    def mount_snapshot(self, vol, snap, target):
        self.ctx.run(["mount", "-t", "zfs", "-o", MOUNT_OPTIONS, snap["snapshot"], target])

    def remove(self, snap):
        ds = snap.get("dataset") or (snap.get("volume") or {}).get("detail", {}).get("dataset")
        if not ds:
            return
        name = f"{ds}@{snap['name']}"
        if self._exists(name):
            self.ctx.run(["zfs", "destroy", name], timeout=300)

    def health(self, snap):
        return None if self._exists(snap["snapshot"]) else "it no longer exists"

    def stale(self):
        try:
            r = self.ctx.run(["zfs", "list", "-H", "-t", "snapshot", "-o", "name"], changes=False, check=False)
        except CommandError:
            return []
        out = []
        for line in r.text.splitlines():
            ds, _, name = line.strip().partition("@")
            if name.startswith(self.name_prefix):
                out.append({"name": name, "dataset": ds})
        return out


@hookimpl
def modes():
    return [Zfs]
