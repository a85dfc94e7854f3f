"""Built-in plugin: mode `command` — snapshots by commands you supply.

For any platform without a built-in provider (a SAN, Solaris fssnap, Tru64
AdvFS clones, a reflink copy of a loop image, ...). Each command is an argv
list; `{placeholders}` in its elements are filled in, never passed through a
shell: {volume} (the live mountpoint), {device} (its source), {fstype},
{name} (the snapshot name, with the configured prefix), {snapshot} (what
`create` printed, stripped), {target} (the stable mount path).
By default the filesystem is frozen (fsfreeze) around `create`.
"""

import string

from borg_cyrus.errors import BorgCyrusError
from borg_cyrus.hookspecs import hookimpl
from borg_cyrus.providers.snapshot import MOUNT_OPTIONS, SnapshotMode

ARGV = {"type": "array", "items": {"type": "string"}, "minItems": 1}
SCHEMA = {
    "command_snapshot": {
        "type": "object",
        "additionalProperties": False,
        "default": {},
        "description": "Commands of mode command (argv lists with {placeholders}).",
        "properties": {
            "create": dict(ARGV, description="Takes the snapshot of {volume}; may print an identifier ({snapshot})."),
            "mount": dict(
                ARGV,
                description="Mounts it read-only at {target}. Default: "
                "[mount, -o, ro,nosuid,nodev,noexec, '{snapshot}', '{target}'].",
            ),
            "remove": dict(ARGV, description="Removes it. Must succeed when it is already gone."),
            "check": dict(ARGV, description="Optional: exits non-zero when the snapshot became invalid."),
            "list": dict(
                ARGV,
                description="Optional: prints the {name}s of existing snapshots, one per line (for stale cleanup).",
            ),
            "volumes": {
                "type": "array",
                "items": {"type": "string", "pattern": "^/"},
                "default": [],
                "description": "Mountpoints to snapshot (default: those holding Cyrus's locations).",
            },
        },
    }
}
KNOWN = {"volume", "device", "fstype", "name", "snapshot", "target"}


def fill(argv, values):
    out = []
    for arg in argv:
        for _, field, _, _ in string.Formatter().parse(arg):
            if field is not None and field not in KNOWN:
                raise BorgCyrusError(
                    f"command_snapshot: unknown placeholder {{{field}}} in {arg!r}; "
                    f"use one of {', '.join(sorted(KNOWN))}"
                )
        out.append(arg.format_map(values))
    return out


class CommandSnapshot(SnapshotMode):
    name = "command"
    description = "snapshots taken, mounted and removed by your own commands"
    default_quiesce = "fsfreeze"
    block_level = True

    @property
    def cmds(self):
        c = self.ctx.config["command_snapshot"]
        for key in ("create", "remove"):
            if not c.get(key):
                raise BorgCyrusError(f"{self.ctx.config.path}: command_snapshot.{key} is required by mode command")
        return c

    def volume(self, path, mount):
        wanted = self.ctx.config["command_snapshot"]["volumes"]
        if mount is None:
            raise BorgCyrusError("is on no mounted filesystem")
        if wanted and mount.mountpoint not in wanted:
            raise BorgCyrusError(f"is on {mount.mountpoint}, not one of command_snapshot.volumes")
        return mount.mountpoint, {"device": mount.source, "fstype": mount.fstype}

    def values(self, vol, name, snapshot="", target=""):
        return {
            "volume": vol["root"],
            "device": vol["detail"]["device"],
            "fstype": vol["detail"]["fstype"],
            "name": name,
            "snapshot": snapshot,
            "target": target,
        }

    def create(self, vol, name):
        r = self.ctx.run(fill(self.cmds["create"], self.values(vol, name)), timeout=600)
        ident = r.text.strip().splitlines()[-1].strip() if r.text.strip() else name
        return {"name": name, "snapshot": ident, "volume": vol}

    def mount_snapshot(self, vol, snap, target):
        argv = self.cmds.get("mount") or ["mount", "-o", MOUNT_OPTIONS, "{snapshot}", "{target}"]
        self.ctx.run(fill(argv, self.values(vol, snap["name"], snap["snapshot"], target)))

    def remove(self, snap):
        vol = snap.get("volume")
        if not vol:
            vol = {"root": "", "detail": {"device": "", "fstype": ""}}
        self.ctx.run(
            fill(self.cmds["remove"], self.values(vol, snap["name"], snap.get("snapshot", snap["name"]))), timeout=600
        )

    def health(self, snap):
        argv = self.ctx.config["command_snapshot"].get("check")
        if not argv:
            return None
        vol = snap.get("volume") or {"root": "", "detail": {"device": "", "fstype": ""}}
        r = self.ctx.run(
            fill(argv, self.values(vol, snap["name"], snap.get("snapshot", ""))), check=False, changes=False
        )
        return None if r.returncode == 0 else f"check command failed (exit {r.returncode}): {r.text.strip()[:200]}"

    def stale(self):
        c = self.ctx.config["command_snapshot"]
        if not c.get("list") or not c.get("remove"):
            return []
        r = self.ctx.run(fill(c["list"], {k: "" for k in KNOWN}), changes=False, check=False)
        return [
            {"name": n.strip(), "snapshot": n.strip()}
            for n in r.text.splitlines()
            if n.strip().startswith(self.name_prefix)
        ]


@hookimpl
def modes():
    return [CommandSnapshot]


@hookimpl
def config_schema():
    return SCHEMA
