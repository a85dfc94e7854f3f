"""Work inside the cyrus user's directories as the cyrus user.

Root writing into a directory the cyrus user can write to is a race the cyrus
user can win (a planted symlink, a swapped directory). Restores therefore
place files from a forked child that has dropped to cyrus:mail: whatever it
is tricked into, it can only do what the cyrus user could do anyway. The
child gets a directory descriptor to start from (the private staging tree),
so it needs no permission on root's directories above it.

The cyrus user can signal that child (SIGSTOP, SIGKILL) or make it block (a
FIFO where it opens a file), so root never waits on it without a deadline: a
child that stops, dies or overruns is killed, reaped and reported in one line.
It also dies with root (PR_SET_PDEATHSIG), so it never outlives a killed
restore while holding borg-cyrus's lock, which it inherited.
"""

import ctypes
import json
import os
import select
import signal
import struct
import sys
import time

from borg_cyrus import faults
from borg_cyrus.errors import BorgCyrusError

# the same as tool_timeout's default: what any Cyrus tool of a restore may take
DEFAULT_TIMEOUT = 1800
RESULT_LIMIT = 256 << 20  # a result larger than this is an error, not a memory hog
PR_SET_PDEATHSIG = 1


class ChildFailed(BorgCyrusError):
    pass


def _write_all(fd, data):
    view = memoryview(struct.pack(">Q", len(data)) + data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def _decode(data):
    if len(data) < 8:
        return None
    (n,) = struct.unpack(">Q", data[:8])
    return data[8 : 8 + n] if len(data) >= 8 + n else None


def _caller():
    """The function that called run_as (`Placement.place_as_cyrus`): which
    step, in an error line."""
    return sys._getframe(2).f_code.co_qualname


def _die_with_parent():
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        pass


def _signame(n):
    try:
        return signal.Signals(n).name
    except ValueError:
        return f"signal {n}"


def _kill(pid):
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    while True:
        try:
            os.waitpid(pid, 0)
            return
        except ChildProcessError:
            return
        except InterruptedError:
            continue


def run_as(uid, gid, fn, cwd_fd=None, timeout=None, what=None):
    """Run fn() in a child with uid:gid (and no other groups), its working
    directory cwd_fd; return fn's result (JSON-able). An exception in the
    child is raised here as ChildFailed with the same one-line message; so
    is a child that is stopped, dies, or runs longer than timeout seconds
    (default DEFAULT_TIMEOUT): it is killed and reaped first. what names the
    step in those messages (default: the function that called run_as)."""
    timeout = DEFAULT_TIMEOUT if timeout is None else timeout
    step = what or _caller()
    r, w = os.pipe()
    parent = os.getpid()
    pid = os.fork()
    if pid == 0:  # child
        code = 0
        try:
            os.close(r)
            os.setgroups([gid])
            os.setresgid(gid, gid, gid)
            os.setresuid(uid, uid, uid)
            _die_with_parent()  # after the uid change, which clears it
            if os.getppid() != parent:  # root died before that
                os._exit(1)
            if cwd_fd is not None:
                os.fchdir(cwd_fd)
            os.umask(0o022)
            faults.point("as-cyrus")  # the tests' stop of this child
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
        data = _wait(pid, r, time.monotonic() + timeout, timeout, step)
    except BaseException:
        _kill(pid)
        raise
    finally:
        os.close(r)
    kind, value = json.loads(data)  # JSON, not pickle: the child ran as the cyrus user
    if kind == "error":
        raise ChildFailed(value)
    return value


def _wait(pid, r, deadline, timeout, step):
    """The child's result from pipe r; raises ChildFailed (the child killed
    and reaped) when it stops, dies without one, or overruns."""
    who = f"{step} (as the cyrus user, pid {pid})"
    chunks, size, eof, status = [], 0, False, None
    pause = 0.005
    while True:
        if status is None:
            done, st = os.waitpid(pid, os.WNOHANG | os.WUNTRACED)
            if done and os.WIFSTOPPED(st):
                _kill(pid)
                raise ChildFailed(
                    f"restore step {who} was stopped ({_signame(os.WSTOPSIG(st))}): something running as the "
                    "cyrus user stopped it. It was killed; this restore stops here (run it again)"
                )
            if done:
                status = st
        if eof and status is not None:
            break
        left = deadline - time.monotonic()
        if left <= 0:
            _kill(pid)
            raise ChildFailed(
                f"restore step {who} did not finish within {timeout:g} s (blocked on a file the cyrus user "
                "planted, or stopped and continued?). It was killed; this restore stops here"
            )
        if eof:
            time.sleep(min(pause, left))
        elif select.select([r], [], [], min(pause, left))[0]:
            chunk = os.read(r, 1 << 20)
            if not chunk:
                eof = True
            else:
                chunks.append(chunk)
                size += len(chunk)
                if size > RESULT_LIMIT:
                    _kill(pid)
                    raise ChildFailed(f"restore step {who} sent more than {RESULT_LIMIT} bytes; it was killed")
                continue
        elif status is not None:
            break  # exited; what it wrote is all there (a descendant may keep the pipe open)
        pause = min(pause * 2, 0.2)
    data = _decode(b"".join(chunks))
    if data is None:
        how = (
            f"was killed by {_signame(os.WTERMSIG(status))}"
            if os.WIFSIGNALED(status)
            else f"exited {os.waitstatus_to_exitcode(status)} without a result"
        )
        raise ChildFailed(f"restore step {who} {how}; this restore stops here (run it again)")
    return data
