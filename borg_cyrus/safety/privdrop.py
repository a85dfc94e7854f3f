"""Work inside the cyrus user's directories as the cyrus user.

Root writing into a directory the cyrus user can write to is a race the cyrus
user can win (a planted symlink, a swapped directory). Restores therefore
place files from a forked child that has dropped to cyrus:mail: whatever it
is tricked into, it can only do what the cyrus user could do anyway. The
child gets a directory descriptor to start from (the private staging tree),
so it needs no permission on root's directories above it.
"""

import json
import os
import signal
import struct

from borg_cyrus.errors import BorgCyrusError


class ChildFailed(BorgCyrusError):
    pass


def _write_all(fd, data):
    view = memoryview(struct.pack(">Q", len(data)) + data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def _read_all(fd):
    chunks = []
    while True:
        b = os.read(fd, 1 << 20)
        if not b:
            break
        chunks.append(b)
    data = b"".join(chunks)
    if len(data) < 8:
        return None
    (n,) = struct.unpack(">Q", data[:8])
    return data[8 : 8 + n] if len(data) >= 8 + n else None


def run_as(uid, gid, fn, cwd_fd=None):
    """Run fn() in a child with uid:gid (and no other groups), its working
    directory cwd_fd; return fn's result (JSON-able). An exception in the
    child is raised here as ChildFailed with the same one-line message."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        code = 0
        try:
            os.close(r)
            os.setgroups([gid])
            os.setresgid(gid, gid, gid)
            os.setresuid(uid, uid, uid)
            if cwd_fd is not None:
                os.fchdir(cwd_fd)
            os.umask(0o022)
            payload = ("ok", fn())
        except BaseException as e:  # the parent reports it
            code = 1
            msg = str(e) if isinstance(e, BorgCyrusError) else f"{e.__class__.__name__}: {e}"
            payload = ("error", msg)
        try:
            _write_all(w, json.dumps(payload).encode())
        finally:
            os._exit(code)
    os.close(w)
    try:
        data = _read_all(r)
        _, status = os.waitpid(pid, 0)
    except BaseException:
        try:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        except OSError:
            pass
        raise
    finally:
        os.close(r)
    if data is None:
        raise ChildFailed(f"the restore step running as the cyrus user died (status {status})")
    kind, value = json.loads(data)  # JSON, not pickle: the child ran as the cyrus user
    if kind == "error":
        raise ChildFailed(value)
    return value
