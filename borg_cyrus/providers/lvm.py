"""Built-in plugin: mode `lvm` — LVM snapshots (`lvcreate -s`), mounted read-only.

`lvcreate -s` suspends the origin through device-mapper, which freezes the
filesystem (ext4, XFS) for the instant of the snapshot, so no extra freeze is
needed. XFS snapshots are mounted with `nouuid` (same UUID as the origin).
A snapshot that overflows becomes invalid mid-backup: `after` checks every
snapshot (`lvs` attr 'I' or 100% used) and fails the run loudly.
"""

from borg_cyrus.errors import BorgCyrusError, CommandError
from borg_cyrus.hookspecs import hookimpl
from borg_cyrus.providers.snapshot import MOUNT_OPTIONS, SnapshotMode

SCHEMA = {
    "lvm": {
        "type": "object",
        "additionalProperties": False,
        "default": {},
        "description": "Settings of mode lvm.",
        "properties": {
            "snapshot_size": {
                "type": "string",
                "pattern": r"^[0-9.]+(%(ORIGIN|VG|FREE)|[bBsSkKmMgGtTpPeE]?)$",
                "default": "10%ORIGIN",
                "description": "lvcreate size of each snapshot: absolute (2G) or a percentage (10%ORIGIN, 5%VG).",
            },
        },
    }
}


class Lvm(SnapshotMode):
    name = "lvm"
    description = "LVM snapshots (lvcreate -s), mounted read-only at a stable path"
    provider_freezes = True
    default_quiesce = "none"

    def _lvs(self, target, fields):
        r = self.ctx.run(["lvs", "--noheadings", "--separator", "|", "-o", fields, target], changes=False, check=False)
        if r.returncode:
            return None
        return [x.strip() for x in r.text.strip().split("|")]

    def volume(self, path, mount):
        if mount is None or not mount.source.startswith("/dev/"):
            raise BorgCyrusError(f"is on {mount.source if mount else 'nothing'}, not a block device")
        info = self._lvs(mount.source, "vg_name,lv_name")
        if not info or len(info) < 2:
            raise BorgCyrusError(f"is on {mount.source} ({mount.fstype}), not an LVM logical volume")
        return mount.mountpoint, {"vg": info[0], "lv": info[1], "device": mount.source, "fstype": mount.fstype}

    def create(self, vol, name):
        d = vol["detail"]
        size = self.ctx.config["lvm"]["snapshot_size"]
        size_args = ["-l", size] if "%" in size else ["-L", size]
        self.ctx.run(["lvcreate", "--snapshot", "--name", name, *size_args, f"{d['vg']}/{d['lv']}"], timeout=300)
        return {"name": name, "vg": d["vg"], "origin": d["lv"], "fstype": d["fstype"]}

    def mount_snapshot(self, vol, snap, target):
        opts = MOUNT_OPTIONS + (",nouuid" if snap["fstype"] == "xfs" else "")
        self.ctx.run(["mount", "-t", snap["fstype"], "-o", opts, f"/dev/{snap['vg']}/{snap['name']}", target])

    def remove(self, snap):
        vg = snap.get("vg") or (snap.get("volume") or {}).get("detail", {}).get("vg")
        if not vg:
            return
        if self._lvs(f"{vg}/{snap['name']}", "lv_name") is None:
            return
        self.ctx.run(["lvremove", "--force", f"{vg}/{snap['name']}"], timeout=300)

    def health(self, snap):
        info = self._lvs(f"{snap['vg']}/{snap['name']}", "lv_attr,snap_percent")
        if info is None:
            return "it no longer exists"
        attr, percent = info[0], (info[1] if len(info) > 1 else "")
        if len(attr) > 4 and attr[4] in "IS":
            return f"LVM marked it invalid (lv_attr {attr}): it overflowed; raise lvm.snapshot_size"
        try:
            if percent and float(percent) >= 100.0:
                return f"it is {percent}% full (overflowed); raise lvm.snapshot_size"
        except ValueError:
            pass
        return None

    def stale(self):
        try:
            r = self.ctx.run(
                ["lvs", "--noheadings", "--separator", "|", "-o", "vg_name,lv_name,lv_attr"], changes=False, check=False
            )
        except CommandError:
            return []
        out = []
        for line in r.text.splitlines():
            parts = [x.strip() for x in line.split("|")]
            if len(parts) == 3 and parts[1].startswith(self.name_prefix) and parts[2][:1] in "sS":
                out.append({"name": parts[1], "vg": parts[0]})
        return out


@hookimpl
def modes():
    return [Lvm]


@hookimpl
def config_schema():
    return SCHEMA
