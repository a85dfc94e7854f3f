"""The one place that runs external commands.

Every command is an argv list (never a shell string), is logged, and is marked
as read-only or changing: under --dry-run a changing command is logged and
skipped, a read-only one still runs, so a dry run shows real discovery.
"""

import logging
import os
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import dataclass

from borg_cyrus.safety import cgroups
from borg_cyrus.errors import CommandError

log = logging.getLogger(__name__)


@dataclass
class Result:
    argv: list
    returncode: int
    stdout: bytes = b""
    stderr: bytes = b""
    seconds: float = 0.0
    skipped: bool = False

    @property
    def text(self):
        return self.stdout.decode("utf-8", "replace")


def _as_daemon():
    """A service started by a backup: normal CPU priority even when the backup
    runs niced, and outside the backup's control group (borg_cyrus.safety.cgroups)."""
    try:
        os.setpriority(os.PRIO_PROCESS, 0, 0)
    except OSError:
        pass
    cgroups.escape()


def _kill_group(proc):
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except OSError:
        pass
    proc.wait()


def describe(argv):
    return shlex.join(str(a) for a in argv)


def _tail(data, limit=400):
    text = data.decode("utf-8", "replace").strip() if isinstance(data, bytes) else (data or "").strip()
    text = " ".join(text.split())
    return text if len(text) <= limit else "…" + text[-limit:]


class Runner:
    """Runs argv lists; `dry_run` skips changing commands."""

    def __init__(self, dry_run=False, default_timeout=3600):
        self.dry_run = dry_run
        self.default_timeout = default_timeout

    def run(
        self,
        argv,
        *,
        changes=True,
        input=None,
        stdin=None,
        stdout=None,
        timeout=None,
        check=True,
        env=None,
        cwd=None,
        what=None,
        daemon=False,
        pass_fds=(),
    ):
        """Run argv. stdout: None = capture, or an open binary file to stream to.
        timeout: seconds (default: the runner's; 0: none). env: added to ours
        (values are never logged). pass_fds: descriptors the child inherits
        (borg's BORG_PASSPHRASE_FD). daemon=True starts a service (own session,
        normal CPU priority even when the backup job runs niced, outside our
        control group).

        Returns a Result; raises CommandError on non-zero exit (check=True),
        on timeout, or when the program is missing.
        """
        argv = [os.fspath(a) for a in argv]
        label = what or os.path.basename(argv[0])
        if changes and self.dry_run:
            log.info("dry run: would run %s", describe(argv))
            return Result(argv, 0, skipped=True)
        log.debug("running %s", describe(argv))
        timeout = self.default_timeout if timeout is None else (timeout or None)
        full_env = None
        if env:
            full_env = dict(os.environ)
            full_env.update(env)
        start = time.monotonic()
        try:
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.PIPE if input is not None else stdin,
                stdout=stdout if stdout is not None else subprocess.PIPE,
                stderr=subprocess.PIPE,
                env=full_env,
                cwd=cwd,
                # own process group, so a timeout or our own death takes its children too;
                # a daemon (Cyrus's master) gets its own session, normal priority and leaves our cgroup
                process_group=None if daemon else 0,
                start_new_session=daemon,
                preexec_fn=_as_daemon if daemon else None,
                pass_fds=tuple(pass_fds),
            )
        except FileNotFoundError:
            raise CommandError(f"{label}: program not found: {argv[0]}", argv) from None
        except PermissionError:
            raise CommandError(f"{label}: not executable: {argv[0]}", argv) from None
        try:
            out, err = proc.communicate(input=input, timeout=timeout)
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            raise CommandError(
                f"{label} did not finish within {timeout} s and was killed: {describe(argv)}", argv
            ) from None
        except BaseException:
            _kill_group(proc)
            raise
        result = Result(argv, proc.returncode, out or b"", err or b"", time.monotonic() - start)
        log.debug("%s exited %d after %.3f s", label, proc.returncode, result.seconds)
        if check and proc.returncode != 0:
            detail = _tail(err) or _tail(out) or "no output"
            raise CommandError(
                f"{label} failed (exit {proc.returncode}): {detail} [command: {describe(argv)}]",
                argv,
                proc.returncode,
                _tail(err),
            )
        return result

    def spawn(self, argv, *, env=None, pass_fds=(), what=None):
        """Start a helper that outlives this process (the dead-man switch): its
        own session, outside our control group, no stdio. Returns the Popen."""
        argv = [os.fspath(a) for a in argv]
        log.debug("starting %s", describe(argv))
        full_env = dict(os.environ, **(env or {}))
        try:
            return subprocess.Popen(
                argv,
                pass_fds=tuple(pass_fds),
                start_new_session=True,
                env=full_env,
                preexec_fn=cgroups.escape,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        except OSError as e:
            raise CommandError(
                f"{what or os.path.basename(argv[0])}: cannot start {argv[0]}: {e.strerror}", argv
            ) from None

    def converse(self, argv, *, env=None, cwd=None, pass_fds=(), what=None):
        """Start a helper that answers requests: one JSON object per line each
        way (Conversation). Read-only by contract: it also runs under --dry-run."""
        argv = [os.fspath(a) for a in argv]
        label = what or os.path.basename(argv[0])
        log.debug("starting %s", describe(argv))
        full_env = dict(os.environ, **(env or {}))
        try:
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env=full_env,
                cwd=cwd,
                process_group=0,  # a timeout or our own death takes its children too
                pass_fds=tuple(pass_fds),
            )
        except OSError as e:
            raise CommandError(f"{label}: cannot start {argv[0]}: {e.strerror}", argv) from None
        return Conversation(proc, argv, label)


class Conversation:
    """A running helper: send() a JSON object, receive() the next one. Its
    stderr is collected meanwhile; close() ends it and returns a Result."""

    def __init__(self, proc, argv, label):
        import threading

        self.proc, self.argv, self.label = proc, argv, label
        self._err = []
        self._start = time.monotonic()
        self._reader = threading.Thread(target=lambda: self._err.extend(iter(proc.stderr.readline, b"")), daemon=True)
        self._reader.start()

    @property
    def stderr(self):
        return b"".join(self._err)

    def send(self, obj):
        import json

        try:
            self.proc.stdin.write(json.dumps(obj).encode() + b"\n")
            self.proc.stdin.flush()
        except (BrokenPipeError, ValueError):
            return False
        return True

    def receive(self):
        """The next JSON object, or None when the helper has ended."""
        import json

        line = self.proc.stdout.readline()
        if not line:
            return None
        try:
            obj = json.loads(line)
        except ValueError:
            return {"unparsed": line.decode("utf-8", "replace").strip()}
        return obj if isinstance(obj, dict) else {"unparsed": obj}

    def close(self, timeout=60):
        """Ask the helper to end (EOF on its stdin), wait; kill its group if
        it does not end in time or we are interrupted."""
        try:
            try:
                self.proc.stdin.close()
            except OSError:
                pass
            self.proc.wait(timeout=timeout)
        except BaseException:
            _kill_group(self.proc)
            if not isinstance(sys.exc_info()[1], subprocess.TimeoutExpired):
                raise
        self._reader.join(5)
        self.proc.stdout.close()
        self.proc.stderr.close()
        result = Result(self.argv, self.proc.returncode, b"", self.stderr, time.monotonic() - self._start)
        log.debug("%s exited %d after %.3f s", self.label, self.proc.returncode, result.seconds)
        return result

    def kill(self):
        _kill_group(self.proc)
        return self.close(timeout=5)
