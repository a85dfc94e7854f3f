"""Which filesystem holds a path: /proc/self/mountinfo, read-only."""

import os
from dataclasses import dataclass


@dataclass(frozen=True)
class Mount:
    mount_id: int
    parent_id: int
    dev: str  # major:minor
    root: str  # path inside the filesystem that is mounted here
    mountpoint: str
    options: str
    fstype: str
    source: str
    super_options: str

    def has_option(self, opt):
        return opt in self.options.split(",") or opt in self.super_options.split(",")


def _unescape(s):
    # mountinfo escapes space, tab, newline and backslash as \ooo
    out, i = [], 0
    while i < len(s):
        if s[i] == "\\" and i + 3 < len(s) + 1 and s[i + 1 : i + 4].isdigit():
            out.append(chr(int(s[i + 1 : i + 4], 8)))
            i += 4
        else:
            out.append(s[i])
            i += 1
    return "".join(out)


def parse_mountinfo(text):
    out = []
    for line in text.splitlines():
        left, _, right = line.partition(" - ")
        f = left.split()
        r = right.split()
        if len(f) < 6 or len(r) < 2:
            continue
        out.append(
            Mount(
                int(f[0]),
                int(f[1]),
                f[2],
                _unescape(f[3]),
                _unescape(f[4]),
                f[5],
                r[0],
                _unescape(r[1]),
                r[2] if len(r) > 2 else "",
            )
        )
    return out


def mounts():
    with open("/proc/self/mountinfo") as f:
        return parse_mountinfo(f.read())


def _inside(path, root):
    return root == "/" or path == root or path.startswith(root.rstrip("/") + "/")


def mount_of(path, table=None):
    """The mount that holds path (the last-mounted of the longest match)."""
    path = os.path.realpath(path)
    best = None
    for m in table if table is not None else mounts():
        if _inside(path, m.mountpoint) and (best is None or len(m.mountpoint) >= len(best.mountpoint)):
            best = m
    return best


def is_mountpoint(path, table=None):
    path = os.path.realpath(path)
    return any(m.mountpoint == path for m in (table if table is not None else mounts()))


def mounted_under(root, table=None):
    """Mountpoints at or below root, deepest first."""
    root = os.path.realpath(root)
    found = [m.mountpoint for m in (table if table is not None else mounts()) if _inside(m.mountpoint, root)]
    return sorted(set(found), key=lambda p: (-p.count("/"), p))
