"""The dead-man switch: an independent process that thaws frozen filesystems
and starts a stopped Cyrus if borg-cyrus dies or hangs.

A process blocked on a frozen filesystem cannot even be killed, so the thaw
must come from elsewhere. `before` starts this watchdog in its own session
before it freezes or stops anything; the watchdog acts when the deadline
passes or the guarded process (borg-cyrus, or the borgmatic that owns a
stop-master run) is gone, whichever comes first. A run that finishes normally
disarms it (SIGUSR1). SIGTERM makes it act at once: systemd signals every
process of a unit together, and the watchdog leaves the backup's control
group when it starts (borg_cyrus.safety.cgroups), so neither the SIGTERM nor the
final SIGKILL of a stopped unit can take it down unnoticed. It never writes
to a filesystem before thawing it.
"""

import argparse
import json
import logging
import os
import signal
import sys
import time

from borg_cyrus import state as state_mod
from borg_cyrus.errors import BorgCyrusError
from borg_cyrus.state import proc_stat

log = logging.getLogger(__name__)


def _alive(pid, start):
    st = proc_stat(pid)
    return st is not None and st[1] != "Z" and (start is None or st[3] == start)


def act(thaw, service, runner_log):
    from borg_cyrus.execute import Runner

    for mp in thaw:
        r = Runner().run(["fsfreeze", "--unfreeze", mp], check=False, timeout=60)
        runner_log.append(f"thaw {mp}: exit {r.returncode} {r.stderr.decode(errors='replace').strip()}")
    if service:
        from borg_cyrus.cyrus.service import Service

        svc = Service(service, Runner())
        if not svc.is_running():
            try:
                svc.start()
                runner_log.append("started Cyrus")
            except Exception as e:  # keep trying the rest
                runner_log.append(f"starting Cyrus failed: {e}")


# -- the client: start, release, disarm ---------------------------------------


class Watchdog:
    """Start / stop the dead-man switch process (borg_cyrus.providers.watchdog)."""

    @staticmethod
    def start(ctx, deadline=None, guards=(), thaw=(), service=None, before_deadline=None):
        r, w = os.pipe()
        argv = [
            sys.executable,
            "-m",
            "borg_cyrus.providers.watchdog",
            "--ready-fd",
            str(w),
            "--log",
            os.path.join(ctx.work_dir, "watchdog.log"),
        ]
        if deadline is not None:
            argv += ["--deadline", repr(time.time() + deadline)]
        if before_deadline is not None:
            argv += ["--before-deadline", repr(time.time() + before_deadline)]
        for g in guards:
            argv += ["--guard", g]
        for mp in thaw:
            argv += ["--thaw", mp]
        if service:
            argv += ["--service", json.dumps(service)]
        if ctx.dry_run:
            log.info("dry run: would start the watchdog")
            os.close(r)
            os.close(w)
            return None
        try:
            proc = ctx.runner.spawn(argv, env={"PYTHONDONTWRITEBYTECODE": "1"}, pass_fds=(w,), what="watchdog")
        except BaseException:
            os.close(r)
            os.close(w)
            raise
        os.close(w)
        with os.fdopen(r) as f:
            if f.readline().strip() != "ready":
                raise BorgCyrusError("the watchdog (dead-man switch) did not start; refusing to freeze")
        ident = state_mod.process_identity(proc.pid)
        return ident

    @staticmethod
    def before_done(ident):
        """Tell a watchdog armed with a `before` deadline that `before` finished."""
        Watchdog._signal(ident, signal.SIGUSR2)

    @staticmethod
    def stop(ident):
        """Disarm (SIGTERM would make it act)."""
        Watchdog._signal(ident, signal.SIGUSR1)

    @staticmethod
    def _signal(ident, sig):
        if ident and state_mod.is_alive(ident):
            try:
                with open(f"/proc/{ident['pid']}/cmdline", "rb") as f:
                    cmd = f.read()
                if b"borg_cyrus" not in cmd or b"watchdog" not in cmd:  # a reused pid
                    return
                os.kill(ident["pid"], sig)
            except OSError:
                pass


def own_guard():
    ident = state_mod.process_identity(os.getpid())
    return f"{ident['pid']}:{ident['start']}"


# -- the process ----------------------------------------------------------------


def main(argv=None):
    p = argparse.ArgumentParser(prog="borg-cyrus-watchdog")
    p.add_argument("--deadline", type=float, help="epoch seconds; act then at the latest")
    p.add_argument(
        "--before-deadline",
        type=float,
        help="epoch seconds; act then unless `before` said it is done (SIGUSR2) — a `before` hung "
        "on a filesystem cannot even be killed, let alone start Cyrus",
    )
    p.add_argument("--guard", action="append", default=[], help="PID[:STARTTIME] whose death triggers the action")
    p.add_argument("--thaw", action="append", default=[], help="mountpoint to unfreeze")
    p.add_argument("--service", help="JSON service config of a Cyrus to start")
    p.add_argument("--log", help="file to append what was done to (written after thawing)")
    p.add_argument("--ready-fd", type=int)
    a = p.parse_args(argv)
    got = {}
    # SIGTERM is what a dying unit sends everybody: act first, then exit.
    # A run that finished normally disarms the switch with SIGUSR1.
    signal.signal(signal.SIGTERM, lambda *_: got.setdefault("reason", "SIGTERM received"))
    signal.signal(signal.SIGUSR1, lambda *_: got.setdefault("disarmed", True))
    signal.signal(signal.SIGUSR2, lambda *_: got.setdefault("before_done", True))
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    service = json.loads(a.service) if a.service else None
    guards = []
    for g in a.guard:
        pid, _, start = g.partition(":")
        guards.append((int(pid), start or None))
    if a.ready_fd is not None:
        os.write(a.ready_fd, b"ready\n")
        os.close(a.ready_fd)
    reason = None
    while reason is None:
        if got.get("disarmed"):
            return 0
        reason = got.get("reason")
        if a.deadline is not None and time.time() >= a.deadline:
            reason = "deadline passed"
        if a.before_deadline is not None and not got.get("before_done") and time.time() >= a.before_deadline:
            reason = "`before` did not finish within run_timeout"
        for pid, start in guards:
            if not _alive(pid, start):
                reason = f"process {pid} is gone"
        if reason is None:
            time.sleep(0.02)
    done = []
    act(a.thaw, service, done)
    if a.log:
        try:
            with open(a.log, "a") as f:
                f.write(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} watchdog fired ({reason}): {'; '.join(done)}\n")
        except OSError:
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
