"""What `borg-cyrus init` finds on a host, and the mode it picks.

Discovery (read-only): every location imapd.conf names and the filesystem
under each (mountinfo, btrfs subvolume roots, `lvs`), how much data there is,
how Cyrus is started (systemd, init script, the master binary), and
borgmatic's existing configs and repositories. Planning (`plan_mode`) is a
pure function of those facts, so it is tested with made-up ones.
"""

import glob
import os
import re
from dataclasses import dataclass, field

import yaml

from borg_cyrus.errors import BorgCyrusError
from borg_cyrus.providers import mounts

SUBVOL_ROOT_INO = 256
# below this a nightly `borg create` of the whole spool takes minutes, which is
# what stop-master keeps Cyrus down for; above it rsync-staging stops Cyrus
# only for one rsync of what changed
LARGE_BYTES = 20 << 30
LVM_DEFAULT_PERCENT = 10  # lvm.snapshot_size's default, 10%ORIGIN
BORGMATIC_LOOKUP = ("/etc/borgmatic/config.yaml", "/etc/borgmatic.d")


@dataclass
class FsFacts:
    """The filesystem under one Cyrus location."""

    key: str  # imapd.conf key (configdirectory, partition-default, ...)
    path: str
    exists: bool = True
    fstype: str | None = None
    source: str | None = None
    mountpoint: str | None = None
    subvolume: str | None = None  # btrfs: the subvolume's path inside the filesystem
    lvm: dict | None = None  # vg, lv, lv_bytes, vg_free_bytes


@dataclass
class Plan:
    mode: str
    settings: dict = field(default_factory=dict)  # extra top-level config keys (lvm: ...)
    reasons: list = field(default_factory=list)  # comment lines: why this mode


def locations(layout):
    """(key, directory) of every place Cyrus keeps data, with the directories
    of databases that live outside configdirectory."""
    out = list(layout.data_locations())
    inside = [d for _, d in out]
    for name, (_backend, path) in sorted(layout.databases.items()):
        d = os.path.dirname(path)
        if not any(d == p or d.startswith(p.rstrip("/") + "/") for p in inside):
            out.append((f"{name} database", d))
            inside.append(d)
    return out


def _btrfs_subvolume(path, mount):
    p = os.path.realpath(path)
    while p != mount.mountpoint and os.stat(p).st_ino != SUBVOL_ROOT_INO:
        p = os.path.dirname(p)
    rel = os.path.relpath(p, mount.mountpoint)
    return os.path.normpath(os.path.join(mount.root, "" if rel == "." else rel))


def _lvm(runner, device):
    fields = "vg_name,lv_name,lv_size,vg_free"
    argv = ["lvs", "--noheadings", "--units", "b", "--nosuffix", "--separator", "|", "-o", fields, device]
    try:
        r = runner.run(argv, changes=False, check=False, timeout=30)
    except BorgCyrusError:
        return None  # no LVM tools
    parts = [x.strip() for x in r.text.strip().split("|")] if r.returncode == 0 else []
    if len(parts) != 4:
        return None
    try:
        return {"vg": parts[0], "lv": parts[1], "lv_bytes": int(parts[2]), "vg_free_bytes": int(parts[3])}
    except ValueError:
        return None


def filesystems(layout, runner, table=None):
    """FsFacts of every location."""
    table = mounts.mounts() if table is None else table
    out = []
    for key, path in locations(layout):
        if not os.path.exists(path):
            out.append(FsFacts(key, path, exists=False))
            continue
        m = mounts.mount_of(path, table)
        f = FsFacts(key, path, fstype=m and m.fstype, source=m and m.source, mountpoint=m and m.mountpoint)
        if m and m.fstype == "btrfs":
            f.subvolume = _btrfs_subvolume(path, m)
        elif m and m.source.startswith("/dev/") and m.fstype != "zfs":
            f.lvm = _lvm(runner, m.source)
        out.append(f)
    return out


def data_size(paths, cap=LARGE_BYTES):
    """Bytes in the files below paths; stops counting once past cap."""
    total, todo, seen = 0, [p for p in paths if os.path.isdir(p)], set()
    while todo and total <= cap:
        try:
            entries = list(os.scandir(todo.pop()))
        except OSError:
            continue
        for e in entries:
            try:
                st = e.stat(follow_symlinks=False)
            except OSError:
                continue
            if e.is_dir(follow_symlinks=False):
                if (st.st_dev, st.st_ino) not in seen:
                    seen.add((st.st_dev, st.st_ino))
                    todo.append(e.path)
            elif e.is_file(follow_symlinks=False):
                total += st.st_size
    return total


def free_bytes(path):
    """Free bytes on the filesystem that holds path (or its nearest existing parent)."""
    while not os.path.exists(path):
        path = os.path.dirname(path)
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def _gib(n):
    if n < 1 << 30:
        return f"{n / (1 << 20):.1f} MiB"
    return f"{n / (1 << 30):.1f} GiB"


def _where(f):
    return f"{f.fstype} on {f.source} (mounted at {f.mountpoint})"


def plan_mode(facts, data_bytes=0, staging_free=None, large=LARGE_BYTES):
    """The mode that fits these facts: btrfs, zfs, lvm when every location is
    on such a volume; else stop-master, or rsync-staging for a large spool
    with room for a copy."""
    present = [f for f in facts if f.exists]
    reasons = [f"{f.key} {f.path}: does not exist yet (not considered)" for f in facts if not f.exists]
    if not present:
        return Plan("stop-master", reasons=reasons + ["no location exists yet: stop-master needs nothing"])
    if all(f.fstype == "btrfs" for f in present):
        reasons += [f"{f.key} {f.path}: btrfs subvolume {f.subvolume} on {f.source}" for f in present]
        reasons.append("every location is in a btrfs subvolume: mode btrfs (atomic snapshots, Cyrus keeps running)")
        return Plan("btrfs", reasons=reasons)
    if all(f.fstype == "zfs" for f in present):
        reasons += [f"{f.key} {f.path}: ZFS dataset {f.source}" for f in present]
        reasons.append("every location is on a ZFS dataset: mode zfs (atomic snapshots, Cyrus keeps running)")
        return Plan("zfs", reasons=reasons)
    why_not = []
    if all(f.lvm for f in present):
        lvs = {(f.lvm["vg"], f.lvm["lv"]): f.lvm for f in present}
        vgs = {}
        for (vg, _lv), info in lvs.items():
            need, free, n = vgs.get(vg, (0, info["vg_free_bytes"], 0))
            vgs[vg] = (need + info["lv_bytes"] * LVM_DEFAULT_PERCENT // 100, free, n + 1)
        reasons += [f"{f.key} {f.path}: LVM {f.lvm['vg']}/{f.lvm['lv']} ({f.fstype})" for f in present]
        if all(free >= need for need, free, _ in vgs.values()):
            reasons.append(
                "every location is on an LVM logical volume and each VG has room for "
                f"{LVM_DEFAULT_PERCENT}%ORIGIN snapshots: mode lvm"
            )
            return Plan("lvm", reasons=reasons)
        if all(free >= (64 << 20) * n for _, free, n in vgs.values()):
            mib = min(free // n for _, free, n in vgs.values()) >> 20
            reasons.append(
                f"every location is on an LVM logical volume, but a VG has less free space than "
                f"{LVM_DEFAULT_PERCENT}%ORIGIN: mode lvm with {mib}M snapshots (the free extents shared out; "
                "a snapshot that overflows fails the backup loudly: add space to the VG and raise it)"
            )
            return Plan("lvm", settings={"lvm": {"snapshot_size": f"{mib}M"}}, reasons=reasons)
        why_not = [f"VG {vg} has {_gib(free)} free, too little for snapshots" for vg, (_, free, _n) in vgs.items()]
    else:
        for f in present:
            if f.fstype not in ("btrfs", "zfs") and not f.lvm:
                why_not.append(f"{f.key} {f.path} is on {_where(f)}: no snapshots there")
        if not why_not:
            why_not = ["the locations are on different kinds of volume: no one snapshot mode covers them"]
    reasons += why_not
    if data_bytes > large and staging_free is not None and staging_free > data_bytes * 11 // 10:
        reasons.append(
            f"more than {_gib(large)} of mail with {_gib(staging_free)} free for a copy: mode rsync-staging "
            "(Cyrus stops only for one rsync of what changed; the backup then reads the copy)"
        )
        return Plan("rsync-staging", reasons=reasons)
    size = f"more than {_gib(large)}" if data_bytes > large else f"{_gib(data_bytes)}"
    extra = f" (rsync-staging would need room for a copy: {_gib(staging_free or 0)} free)" if data_bytes > large else ""
    reasons.append(
        f"{size} of mail: mode stop-master (Cyrus is stopped for the whole backup, usually minutes at this "
        f"size; consistent, nothing else needed){extra}"
    )
    return Plan("stop-master", reasons=reasons)


def detect_service(runner, tools, overrides=None):
    """(the `service:` section, a comment line): systemd unit, init script,
    or the master binary; overrides (KEY: value) win, a `manager` among them
    replaces what was found."""
    overrides = dict(overrides or {})
    if "manager" in overrides:
        return overrides, f"service given on the command line (manager {overrides['manager']})"
    unit = "cyrus-imapd.service"
    if os.path.isdir("/run/systemd/system"):
        try:
            r = runner.run(["systemctl", "show", "-p", "LoadState", "--value", unit], changes=False, check=False)
            loaded = r.returncode == 0 and r.text.strip() == "loaded"
        except BorgCyrusError:
            loaded = False
        if loaded:
            return {"manager": "systemd", "systemd_unit": unit, **overrides}, f"systemd unit {unit}"
    script = "/etc/init.d/cyrus-imapd"
    if os.access(script, os.X_OK):
        return {"manager": "sysv", "init_script": script, **overrides}, f"init script {script}"
    master = tools.paths.get("master", "/usr/sbin/cyrmaster")
    svc = {"manager": "command", "pidfile": "/run/cyrus-master.pid", "start_command": [master, "-d"], **overrides}
    return svc, f"no systemd unit {unit}, no {script}: the master binary {master} (check pidfile and start_command)"


def existing_borgmatic(lookup=BORGMATIC_LOOKUP):
    """borgmatic config files in its default lookup (files, then *.yaml/*.yml of directories)."""
    out = []
    for p in lookup:
        if os.path.isdir(p):
            out += sorted(glob.glob(os.path.join(p, "*.yaml")) + glob.glob(os.path.join(p, "*.yml")))
        elif os.path.isfile(p):
            out.append(p)
    return out


def repositories(paths):
    """(config file, repository path) of every repository those configs name."""
    out = []
    for p in paths:
        try:
            with open(p) as f:
                data = yaml.safe_load(f)
        except (OSError, yaml.YAMLError):
            continue
        for repo in (data or {}).get("repositories") or [] if isinstance(data, dict) else []:
            path = repo.get("path") if isinstance(repo, dict) else repo
            if isinstance(path, str):
                out.append((p, path))
    return out


def has_hooks(path):
    """True when the config already runs the borg-cyrus hooks."""
    try:
        with open(path) as f:
            return re.search(r"borg-cyrus\b.*\bbefore\b", f.read()) is not None
    except OSError:
        return False
