"""Other runs: one still going (wait, then fail or skip), one that looks stuck,
one that died and left things behind; and the deadline of a run itself."""

import datetime
import logging
import signal

from borg_cyrus import state as state_mod
from borg_cyrus.errors import BorgCyrusError, BusyError, DeadlineError, SkipError

log = logging.getLogger(__name__)


class Deadline:
    """SIGALRM after `seconds`: the run fails with DeadlineError (and undoes
    what it did) instead of hanging with Cyrus stopped."""

    def __init__(self, seconds, what):
        self.seconds, self.what = seconds, what
        self.old = None

    def _fire(self, signum, frame):
        self.cancel()
        raise DeadlineError(
            f"{self.what} did not finish within {self.seconds:g} s (run_timeout); undoing it. "
            "Find what hangs (a tool, a filesystem) or raise run_timeout"
        )

    def __enter__(self):
        self.old = signal.signal(signal.SIGALRM, self._fire)
        signal.setitimer(signal.ITIMER_REAL, self.seconds)
        return self

    def cancel(self):
        signal.setitimer(signal.ITIMER_REAL, 0)

    def __exit__(self, *exc):
        self.cancel()
        signal.signal(signal.SIGALRM, self.old or signal.SIG_DFL)


def other_run(ctx, owner, force=False):
    """The state of another backup that is still running, or None. A run
    older than busy.max_run_age is an error right away."""
    data = state_mod.State(ctx.state_file).load()
    if data is None or force:
        return None
    prev = data.get("owner")
    if not state_mod.is_alive(prev) or prev == owner:
        return None
    age = run_age(data)
    limit = ctx.config["busy"]["max_run_age"]
    if age is not None and age > limit:
        raise BusyError(
            f"a backup started {data.get('started')} by {prev.get('comm')} (pid {prev.get('pid')}) "
            f"has been running for {age / 3600:.1f} h, longer than busy.max_run_age ({limit:g} s): it "
            "looks stuck; stop it, then run `borg-cyrus after` to clean up"
        )
    return data


def going_on(ctx):
    """What keeps a backup from starting now, as a phrase (a borg-cyrus
    command holding the lock, a backup between `before` and `after`), or
    None. For callers with a deadline of their own (the apt hook's
    pre-upgrade) that must not wait busy.wait blindly."""
    holder = state_mod.lock_holder(ctx.lock_file)
    if holder is not None:
        return f"another borg-cyrus command holds {ctx.lock_file}" + (f" (pid {holder})" if holder else "")
    try:
        data = state_mod.State(ctx.state_file).load()
    except BorgCyrusError:
        return None
    prev = (data or {}).get("owner")
    if data and state_mod.is_alive(prev):
        return f"a backup started {data.get('started')} by {prev.get('comm')} (pid {prev.get('pid')}) is still running"
    return None


def busy_error(ctx, data):
    prev = data.get("owner") or {}
    cls = SkipError if ctx.config["busy"]["action"] == "skip" else BusyError
    return cls(
        f"a backup started {data.get('started')} by {prev.get('comm')} (pid {prev.get('pid')}) is still "
        f"running after waiting {ctx.config['busy']['wait']:g} s (busy.wait); "
        + (
            "skipping this one (busy.action: skip)"
            if cls is SkipError
            else "this run fails. If that backup is not running, run `borg-cyrus after --force` to clean up"
        )
    )


def run_age(data):
    try:
        started = datetime.datetime.fromisoformat(data.get("started"))
    except (TypeError, ValueError):
        return None
    return (datetime.datetime.now().astimezone() - started).total_seconds()


def describe_step(ctx, step):
    """What a recorded step left on the host, as a phrase."""
    kind = step.get("kind")
    if kind == "service-stopped":
        from borg_cyrus.cyrus.service import Service

        running = Service(ctx.config["service"], ctx.runner).is_running()
        return "Cyrus stopped by borg-cyrus" + (" (it runs again now)" if running else " (STILL STOPPED)")
    if kind == "fs-frozen":
        return f"filesystem {step.get('mountpoint')} frozen"
    if kind == "mount":
        return f"snapshot mounted at {step.get('target')}"
    if kind == "snapshot":
        return f"snapshot {(step.get('snapshot') or {}).get('name')} of {(step.get('volume') or {}).get('root')}"
    if kind == "watchdog":
        alive = state_mod.is_alive(step.get("process"))
        return "dead-man switch " + ("still armed" if alive else "gone")
    if kind == "pit-dir":
        return f"private config copy {step.get('path')}"
    return f"{kind} ({step.get('mode')})"


def left_behind(ctx):
    """Problems a run left on this host, each with the command that fixes it."""
    try:
        data = state_mod.State(ctx.state_file).load()
    except BorgCyrusError as e:
        return [str(e)]
    if data is None:
        return []
    prev = data.get("owner") or {}
    steps = data.get("steps") or []
    what = "; ".join(describe_step(ctx, s) for s in steps) or "no steps"
    age = run_age(data)
    if state_mod.is_alive(prev):
        if age is not None and age > ctx.config["busy"]["max_run_age"]:
            return [
                f"a backup started {data.get('started')} by {prev.get('comm')} (pid {prev.get('pid')}) has run "
                f"for {age / 3600:.1f} h, longer than busy.max_run_age: it looks stuck ({what}); stop it, "
                "then run `borg-cyrus after`"
            ]
        return []
    return [
        f"a backup started {data.get('started')} (mode {data.get('mode')}) ended without `after` and left: "
        f"{what}; run `borg-cyrus after` to undo it (the next backup would too)"
    ]
