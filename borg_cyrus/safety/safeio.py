"""File access on paths that someone else may control.

Root reads and writes inside directories the cyrus user can write to (spools,
configdirectory, an extracted archive). Everything here refuses what a
hostile writer could plant there: symlinks are not followed where it matters,
non-regular files (FIFOs, devices, sockets) are never opened blocking, new
files are created with O_EXCL|O_NOFOLLOW and owned through their descriptor,
and trees are walked with directory descriptors (os.fwalk), so a directory
swapped for a symlink mid-walk is not followed.
"""

import errno
import os
import stat

from borg_cyrus.errors import BorgCyrusError

KINDS = {
    stat.S_IFIFO: "a FIFO",
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
    stat.S_IFSOCK: "a socket",
    stat.S_IFLNK: "a symlink",
    stat.S_IFDIR: "a directory",
}


class NotRegularFile(BorgCyrusError):
    """path exists but is not a regular file (kind says what it is)."""

    def __init__(self, path, kind):
        super().__init__(f"{path} is {kind}, not a regular file")
        self.path = path
        self.kind = kind


def kind(mode):
    return KINDS.get(stat.S_IFMT(mode), "not a regular file")


def open_regular(path, follow=False, dir_fd=None):
    """A read-only descriptor of the regular file at path.

    Never blocks on a FIFO or device; follow=False refuses a symlink at the
    last component. Raises NotRegularFile, or OSError (FileNotFoundError ...).
    """
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | (0 if follow else os.O_NOFOLLOW)
    try:
        fd = os.open(path, flags, dir_fd=dir_fd)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise NotRegularFile(path, "a symlink") from None
        raise
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise NotRegularFile(path, kind(st.st_mode))
    return fd


def read_bytes(path, limit=None, follow=False, what=None):
    """Bytes of a regular file; more than limit bytes is an error."""
    fd = open_regular(path, follow=follow)
    with os.fdopen(fd, "rb") as f:
        data = f.read() if limit is None else f.read(limit + 1)
    if limit is not None and len(data) > limit:
        raise BorgCyrusError(f"{what or path}: larger than {limit} bytes; refusing to read it")
    return data


def read_head(path, n, follow=False):
    """The first n bytes of a regular file, and its size."""
    fd = open_regular(path, follow=follow)
    try:
        return os.pread(fd, n, 0), os.fstat(fd).st_size
    finally:
        os.close(fd)


def copy_regular(src, dst, uid=None, gid=None, mode=0o600, follow_src=False):
    """Copy the regular file src to a new file dst (which must not exist:
    O_EXCL|O_NOFOLLOW), owned uid:gid through its descriptor."""
    sfd = open_regular(src, follow=follow_src)
    try:
        dfd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
        try:
            size = os.fstat(sfd).st_size
            off = 0
            while off < size:
                n = os.sendfile(dfd, sfd, off, min(size - off, 1 << 24))
                if n == 0:
                    break
                off += n
            if uid is not None:
                os.fchown(dfd, uid, gid)
            os.fchmod(dfd, mode)
        finally:
            os.close(dfd)
    finally:
        os.close(sfd)


def create_file(path, data=b"", uid=None, gid=None, mode=0o600):
    """Write a new file (O_EXCL|O_NOFOLLOW: never through a planted symlink)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        if uid is not None:
            os.fchown(f.fileno(), uid, gid)
        os.fchmod(f.fileno(), mode)


def chown_tree(root, uid, gid, dry_run=False, skipped=None):
    """Give every entry below root (root included) to uid:gid without
    following symlinks, children before their directory (so no directory
    is uid's while its contents are still being changed); returns how many
    entries changed. A file of another owner with more than one hard link
    is left alone (a link planted to a file outside) and appended to skipped."""
    changed = 0
    try:
        st = os.lstat(root)
    except FileNotFoundError:
        return 0

    def fix(est, name, dfd, where=""):
        nonlocal changed
        if (est.st_uid, est.st_gid) == (uid, gid):
            return
        if stat.S_ISREG(est.st_mode) and est.st_nlink > 1 and est.st_uid != uid:
            if skipped is not None:
                skipped.append(os.path.join(where, name))
            return
        if not dry_run:
            os.chown(name, uid, gid, dir_fd=dfd, follow_symlinks=False)
        changed += 1

    if stat.S_ISDIR(st.st_mode):
        for dirpath, dirnames, filenames, dfd in os.fwalk(root, topdown=False, follow_symlinks=False):
            for name in filenames + dirnames:
                try:
                    est = os.stat(name, dir_fd=dfd, follow_symlinks=False)
                except FileNotFoundError:
                    continue
                fix(est, name, dfd, dirpath)
    fix(st, root, None)
    return changed


def sanitize_tree(root, uid, gid):
    """Make an extracted (untrusted) tree plain data owned by uid:gid:
    symlinks, FIFOs, devices and sockets are removed and returned by
    relative path; files lose set-id and execute bits; directories become
    0755 at most. Walks with directory descriptors, children first."""
    removed = []
    for dirpath, dirnames, filenames, dfd in os.fwalk(root, topdown=False, follow_symlinks=False):
        rel = os.path.relpath(dirpath, root)
        for name in filenames + dirnames:
            try:
                st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
            except FileNotFoundError:
                continue
            if stat.S_ISDIR(st.st_mode):
                os.chown(name, uid, gid, dir_fd=dfd, follow_symlinks=False)
                os.chmod(name, (st.st_mode & 0o755) | 0o700, dir_fd=dfd)
            elif stat.S_ISREG(st.st_mode):
                os.chown(name, uid, gid, dir_fd=dfd, follow_symlinks=False)
                os.chmod(name, (st.st_mode & 0o644) | 0o600, dir_fd=dfd)
            else:
                os.unlink(name, dir_fd=dfd)
                removed.append((os.path.normpath(os.path.join(rel, name)), kind(st.st_mode)))
    st = os.lstat(root)
    if stat.S_ISDIR(st.st_mode) and not stat.S_ISLNK(st.st_mode):
        os.lchown(root, uid, gid)
        os.chmod(root, (st.st_mode & 0o755) | 0o700)
    return removed


def blocking_parent(path, uid, gid):
    """The first directory on the way to path (path included) that uid:gid
    cannot enter, with its mode; None if it can get there."""
    parts = os.path.normpath(path).split("/")
    cur = "/"
    for part in parts[1:] if len(parts) > 1 and parts[1] else []:
        cur = os.path.join(cur, part)
        try:
            st = os.stat(cur)
        except FileNotFoundError:
            return None
        if not stat.S_ISDIR(st.st_mode):
            return None
        ok = (
            st.st_mode & 0o001 or (st.st_gid == gid and st.st_mode & 0o010) or (st.st_uid == uid and st.st_mode & 0o100)
        )
        if not ok:
            return cur, st
    return None


def copy_tree(src, dst, mode=0o600):
    """Copy the directories and regular files below src to a new dst (root's,
    until the caller chowns it); anything else is left out. src is read
    without following symlinks."""
    os.mkdir(dst, 0o700)
    for dirpath, dirnames, filenames, _dfd in os.fwalk(src, follow_symlinks=False):
        out = os.path.join(dst, os.path.relpath(dirpath, src))
        for name in dirnames:
            os.mkdir(os.path.join(out, name), 0o700)
        for name in filenames:
            try:
                copy_regular(os.path.join(dirpath, name), os.path.join(out, name), mode=mode)
            except NotRegularFile:
                continue
