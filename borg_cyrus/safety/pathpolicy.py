"""Which directories borg-cyrus may treat as Cyrus's or its own.

Restores chown every Cyrus location to the cyrus user and backups create and
chmod the work directory, so a location of `/`, `/etc` or `/tmp` (a typo, a
bad @include, a `..` too many) would hand the system to the cyrus user. Such
paths are refused before anything is done, with the key that named them.
"""

import os

# never a Cyrus location or a borg-cyrus directory themselves
SYSTEM_DIRS = frozenset(
    {
        "/",
        "/bin",
        "/boot",
        "/dev",
        "/etc",
        "/home",
        "/lib",
        "/lib32",
        "/lib64",
        "/libx32",
        "/proc",
        "/root",
        "/run",
        "/sbin",
        "/sys",
        "/tmp",
        "/usr",
        "/usr/bin",
        "/usr/lib",
        "/usr/local",
        "/usr/sbin",
        "/usr/share",
        "/var",
        "/var/cache",
        "/var/lib",
        "/var/log",
        "/var/spool",
        "/var/tmp",
        "/var/run",
        "/var/lock",
    }
)
# a database file may not sit directly in these
CORE_DIRS = frozenset(
    {
        "/",
        "/bin",
        "/boot",
        "/dev",
        "/etc",
        "/lib",
        "/lib32",
        "/lib64",
        "/libx32",
        "/proc",
        "/run",
        "/sbin",
        "/sys",
        "/tmp",
        "/usr",
        "/var/tmp",
    }
)
# nothing of ours lives below these
VIRTUAL = ("/proc", "/sys", "/dev", "/run/lock")


def _resolved(path):
    """path and where its symlinks lead (as far as they can be read)."""
    try:
        return {os.path.normpath(path), os.path.realpath(path)}
    except OSError:
        return {os.path.normpath(path)}


def has_dotdot(path):
    return ".." in path.split("/")


def _inside(path, root):
    return path == root or path.startswith(root.rstrip("/") + "/")


def system_reason(path):
    """Why path may not be a Cyrus location or a borg-cyrus directory, or None."""
    if not path.startswith("/"):
        return "is not an absolute path"
    if has_dotdot(path):
        return "has a '..' component"
    for p in _resolved(path):
        if p in SYSTEM_DIRS:
            return (
                f"is the system directory {p}"
                if p == os.path.normpath(path)
                else f"resolves to the system directory {p}"
            )
        for v in VIRTUAL:
            if _inside(p, v):
                return f"is inside {v}"
    return None


def overlap(a, b):
    """True when one directory is the other or lies inside it."""
    a, b = os.path.normpath(a), os.path.normpath(b)
    return _inside(a, b) or _inside(b, a)


def file_reason(path):
    """Why path may not be a Cyrus database file, or None."""
    if has_dotdot(path):
        return "has a '..' component"
    for p in _resolved(path):
        if os.path.dirname(p) in CORE_DIRS or p in SYSTEM_DIRS:
            return f"is in the system directory {os.path.dirname(p)}"
        for v in VIRTUAL:
            if _inside(p, v):
                return f"is inside {v}"
    return None


def check_apart(own, cyrus):
    """(key, path) pairs of borg-cyrus's directories against Cyrus's
    locations: the first overlap as (own key, own path, cyrus key, cyrus path)."""
    for k, d in own:
        for ck, cd in cyrus:
            if overlap(d, cd):
                return k, d, ck, cd
    return None
