"""Leaving the backup's control group.

systemd stops a unit (`systemctl stop`, a start timeout, shutdown) by
signalling every process in the unit's control group, and kills what is left.
The dead-man switch, and a Cyrus master that borg-cyrus starts itself (the
`command` service manager), must not be in the backup's group: the switch
would die with what it guards, and Cyrus would be killed with the backup.
`escape()` moves the calling process to the root of the hierarchies that
track units (cgroup v2, and v1's name=systemd); children started afterwards
stay outside too. It is used as a preexec function, so it must not raise or
log.
"""

import os

from borg_cyrus.providers import mounts


def _mountpoints():
    """{"unified": path, "name=systemd": path} of the mounted hierarchies."""
    out = {}
    try:
        table = mounts.mounts()
    except OSError:
        return out
    for m in table:
        if m.fstype == "cgroup2":
            out.setdefault("unified", m.mountpoint)
        elif m.fstype == "cgroup" and m.has_option("name=systemd"):
            out.setdefault("name=systemd", m.mountpoint)
    return out


def membership(pid="self"):
    """{hierarchy: cgroup path} for the unit-tracking hierarchies of a process."""
    out = {}
    try:
        with open(f"/proc/{pid}/cgroup") as f:
            lines = f.read().splitlines()
    except OSError:
        return out
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        hid, controllers, path = parts
        if hid == "0" and controllers == "":
            out["unified"] = path
        elif "name=systemd" in controllers.split(","):
            out["name=systemd"] = path
    return out


def own_unit(pid="self"):
    """The systemd unit (a service or scope) whose control group holds the
    process, or None (outside any unit, e.g. after escape())."""
    groups = membership(pid)
    # a container on a hybrid host lists the host's name=systemd group ("/") beside its own unified one
    for hierarchy in ("unified", "name=systemd"):
        for part in reversed(groups.get(hierarchy, "").split("/")):
            if part.endswith((".service", ".scope")):
                return part
    return None


def escape():
    """Move this process to the root group of every unit-tracking hierarchy
    it is not already at the root of. Returns the hierarchies it left."""
    left = []
    mps = _mountpoints()
    for hierarchy, path in membership().items():
        mp = mps.get(hierarchy)
        if not mp or path in ("/", ""):
            continue
        try:
            with open(os.path.join(mp, "cgroup.procs"), "w") as f:
                f.write("0\n")
            left.append(hierarchy)
        except OSError:
            pass
    return left
