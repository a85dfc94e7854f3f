"""Run state between `before` and `after`, and the lock.

`before` and `after` are separate processes (borgmatic runs each hook on its
own), so what `before` created (a stopped service, a snapshot, a mount) is
recorded in a state file *before* each change is made. `after`, or the next
`before` after a crash, undoes the recorded steps in reverse order. The file
also names the process that owns the run (the borgmatic that called us); if
that process is gone the run has crashed and its steps are stale.
"""

import contextlib
import datetime
import errno
import fcntl
import json
import logging
import os
import secrets
import stat
import time

from borg_cyrus.errors import BusyError, BorgCyrusError

log = logging.getLogger(__name__)

SHELLS = {"sh", "bash", "dash", "zsh", "ksh", "busybox", "timeout", "env", "nice", "ionice", "flock"}


# enterable (not listable) by the cyrus user, whose tools read snapshot mounts
# and the point-in-time config below it; the dump directory inside stays 0700
WORK_DIR_MODE = 0o711


def secure_dir(path, mode=0o700):
    """Create path (and parents) with mode; an existing one is used as it is
    (never chmod a directory borg-cyrus did not create) if it is a plain
    directory of this user that nobody else can write to. Missing parents
    are made 0755 whatever the umask: the cyrus user must pass through them
    to the directories a run hands it (point-in-time config, the drill)."""
    make_parents(os.path.dirname(path) or "/")
    try:
        os.mkdir(path, mode)
        os.chmod(path, mode)  # whatever the umask
        return path
    except FileExistsError:
        pass
    st = os.lstat(path)
    if stat.S_ISLNK(st.st_mode) or not stat.S_ISDIR(st.st_mode):
        raise BorgCyrusError(f"{path} is not a plain directory (symlink?); remove it and run again")
    if st.st_uid != os.geteuid():
        raise BorgCyrusError(
            f"{path} belongs to uid {st.st_uid}, not to this user; it holds run state, so "
            f"remove it or give it to root (chown root {path})"
        )
    if st.st_mode & 0o022:
        raise BorgCyrusError(
            f"{path} is writable by others (mode {st.st_mode & 0o7777:o}); it holds run state: "
            f"run chmod go-w {path} or use a directory of its own"
        )
    return path


def make_parents(path, mode=0o755):
    """os.makedirs(path) with each new directory's mode explicit (root's umask may be 077)."""
    path = os.path.abspath(path)
    if os.path.isdir(path):
        return
    make_parents(os.path.dirname(path), mode)
    try:
        os.mkdir(path, mode)
    except FileExistsError:
        return
    os.chmod(path, mode)


def _trusted(st):
    """Only root or this user can change entries of this directory."""
    return st.st_uid in (0, os.geteuid()) and not st.st_mode & 0o022


def open_private_dir(path):
    """A descriptor of the directory path, which only root or this user can
    change (owned by one of them, writable by nobody else). Walked one name at
    a time without following a symlink that anyone else could have planted
    (one in a directory another user can write to, e.g. /tmp or Debian's
    prometheus-owned /var/lib/prometheus). Raises BorgCyrusError (one line),
    or OSError when a directory is missing."""
    path = os.path.abspath(path)
    todo = [c for c in path.split("/") if c]
    fd = os.open("/", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    at, links = "/", 0
    try:
        while todo:
            name = todo.pop(0)
            try:
                nfd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
            except OSError as e:
                if e.errno not in (errno.ELOOP, errno.ENOTDIR):
                    raise
                st = os.stat(name, dir_fd=fd, follow_symlinks=False)
                where = os.path.join(at, name)
                if not stat.S_ISLNK(st.st_mode):
                    raise BorgCyrusError(f"{where} is not a directory (on the way to {path})") from None
                dst = os.fstat(fd)
                if not _trusted(dst):
                    raise BorgCyrusError(
                        f"{where} is a symlink in {at}, which uid {dst.st_uid} or others can write to: not "
                        f"following it to write {path}; use a path without it"
                    ) from None
                links += 1
                if links > 40:
                    raise BorgCyrusError(f"{path}: too many symlinks on the way") from None
                target = os.readlink(name, dir_fd=fd)
                todo = [c for c in target.split("/") if c] + todo
                if target.startswith("/"):
                    os.close(fd)
                    fd = os.open("/", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
                    at = "/"
                continue
            os.close(fd)
            fd, at = nfd, os.path.normpath(os.path.join(at, name))
        st = os.fstat(fd)
        if st.st_uid not in (0, os.geteuid()):
            raise BorgCyrusError(
                f"{path} belongs to uid {st.st_uid}: borg-cyrus writes its files only into a directory of "
                f"root's (chown root {path}, or choose another directory)"
            )
        if st.st_mode & 0o022:
            raise BorgCyrusError(
                f"{path} is a directory others can write to (mode {stat.S_IMODE(st.st_mode):o}): borg-cyrus "
                f"writes its files only where nobody else can (chmod go-w {path}, or choose another directory)"
            )
        return fd
    except BaseException:
        os.close(fd)
        raise


def write_atomic(path, data, mode=0o600):
    """Write bytes/str to path via a temp file + fsync + rename: readers see
    the old file or the new one, never a part. path's directory must be
    root's (or this user's) and writable by nobody else (open_private_dir);
    the temp file is new (O_EXCL|O_NOFOLLOW, an unpredictable hidden name
    `.NAME.RANDOM.tmp`: a collector reading *.prom never sees it, nothing
    planted is ever opened), path gets mode whatever the umask."""
    if isinstance(data, str):
        data = data.encode()
    d, base = os.path.split(os.path.abspath(path))
    dfd = open_private_dir(d)
    try:
        for _ in range(100):
            tmp = f".{base}.{secrets.token_hex(8)}.tmp"
            try:
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode, dir_fd=dfd)
                break
            except FileExistsError:
                continue
        else:
            raise BorgCyrusError(f"{d}: no free temp name for {base}")
        try:
            with os.fdopen(fd, "wb") as f:
                os.fchmod(f.fileno(), mode)
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, base, src_dir_fd=dfd, dst_dir_fd=dfd)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp, dir_fd=dfd)
            raise
        os.fsync(dfd)
    finally:
        os.close(dfd)


def proc_stat(pid):
    """(comm, state letter, ppid, start time) of a process, or None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            data = f.read()
    except OSError:
        return None
    comm = data[data.index("(") + 1 : data.rindex(")")]
    fields = data[data.rindex(")") + 2 :].split()
    return comm, fields[0], int(fields[1]), fields[19]


def process_identity(pid):
    st = proc_stat(pid)
    return None if st is None else {"pid": pid, "comm": st[0], "start": st[3]}


def is_alive(identity):
    """The process still runs (same start time, so not a reused pid; not a zombie)."""
    if not identity:
        return False
    st = proc_stat(identity["pid"])
    return st is not None and st[1] != "Z" and st[3] == identity.get("start")


def find_owner(pid=None):
    """The process a run belongs to: the nearest ancestor that is not a shell.

    For borgmatic's `commands:` hooks that is borgmatic itself.
    BORG_CYRUS_OWNER_PID overrides it.
    """
    env = os.environ.get("BORG_CYRUS_OWNER_PID")
    if env and env.isdigit():
        return process_identity(int(env))
    pid = os.getppid() if pid is None else pid
    for _ in range(20):
        st = proc_stat(pid)
        if st is None:
            return None
        comm, _, ppid, _ = st
        if comm not in SHELLS and not comm.startswith("borg-cyrus") or ppid <= 1:
            return process_identity(pid)
        pid = ppid
    return process_identity(pid)


class State:
    """The state file: {"owner", "mode", "started", "steps": [...]}."""

    def __init__(self, path):
        self.path = path
        self.data = None

    def exists(self):
        return os.path.exists(self.path)

    def load(self):
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_NOFOLLOW)
        except FileNotFoundError:
            self.data = None
            return None
        except OSError as e:
            raise BorgCyrusError(
                f"{self.path}: cannot open the state file safely ({e.strerror}); remove it if it is a symlink"
            ) from None
        st = os.fstat(fd)
        if st.st_uid != os.geteuid() or st.st_mode & 0o022:
            os.close(fd)
            raise BorgCyrusError(
                f"{self.path} is not owned by this user or is writable by others; "
                "it drives cleanup, so it is not trusted: remove it"
            )
        try:
            with os.fdopen(fd) as f:
                self.data = json.load(f)
        except ValueError:
            log.warning("state file %s is unreadable; treating it as a crashed run with no steps", self.path)
            self.data = {"steps": [], "owner": None, "corrupt": True}
        return self.data

    def begin(self, mode, owner):
        self.data = {
            "version": 1,
            "mode": mode,
            "owner": owner,
            "pid": os.getpid(),
            "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
            "steps": [],
        }
        self.save()

    def save(self):
        write_atomic(self.path, json.dumps(self.data, indent=1, sort_keys=True))

    @property
    def steps(self):
        return list((self.data or {}).get("steps", []))

    def push(self, kind, mode, **data):
        """Record a step before performing it; returns the step."""
        step = {"kind": kind, "mode": mode, "at": time.time(), **data}
        self.data["steps"].append(step)
        self.save()
        return step

    def update(self, step, **data):
        step.update(data)
        self.save()

    def drop(self, step):
        self.data["steps"] = [s for s in self.data["steps"] if s is not step and s != step]
        self.save()

    def set(self, **data):
        self.data.update(data)
        self.save()

    def remove(self):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
        self.data = None


@contextlib.contextmanager
def lock(path, wait=None):
    """Hold an exclusive flock on path for the duration of one command."""
    if wait is None:
        wait = float(os.environ.get("BORG_CYRUS_LOCK_WAIT", "30"))
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    deadline = time.monotonic() + wait
    try:
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as e:
                if e.errno not in (errno.EAGAIN, errno.EACCES):
                    raise
                if time.monotonic() >= deadline:
                    holder = ""
                    with contextlib.suppress(OSError, ValueError):
                        holder = f" (pid {int(os.pread(fd, 32, 0).decode().strip())})"
                    raise BusyError(f"another borg-cyrus command holds {path}{holder}; wait for it to finish")
                time.sleep(0.2)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)


def lock_holder(path):
    """None if nobody holds the lock at path (or it does not exist), else the
    holder's pid as it wrote it ("" when it wrote none). Takes the lock for
    an instant when it is free."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except (FileNotFoundError, NotADirectoryError):
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno not in (errno.EAGAIN, errno.EACCES):
                raise
            with contextlib.suppress(OSError, ValueError):
                return str(int(os.pread(fd, 32, 0).decode().strip()))
            return ""
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


class MemoryState(State):
    """A state that is never written (dry runs)."""

    def __init__(self):
        super().__init__(None)

    def save(self):
        pass

    def remove(self):
        self.data = None
