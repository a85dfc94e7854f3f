"""`before` and `after`: the backup run around borgmatic's `borg create`.

config -> discovered layout -> plan (locations, mode) -> freeze the view ->
dumps -> excludes -> manifest + patterns file; `after` undoes what the state
file records. Data flows one way; every change is recorded before it is made.
"""

import contextlib
import datetime
import json
import logging
import os
import shutil
import signal
import socket
import stat
import time

from borg_cyrus import __version__, faults, state as state_mod
from borg_cyrus.backup import consistency, patterns
from borg_cyrus.cyrus import layout as layout_mod
from borg_cyrus.safety import pathpolicy
from borg_cyrus.context import Context
from borg_cyrus.errors import BorgCyrusError, BusyError, ConfigError, DeadlineError, SkipError
from borg_cyrus.model import nest_free
from borg_cyrus.providers.snapshot import Watchdog

log = logging.getLogger(__name__)

WORK_DIR_MODE = state_mod.WORK_DIR_MODE


def build_context(cfg, runner, plugins):
    lay = layout_mod.discover(cfg["imapd_conf"], cfg["cyrus_conf"] if os.path.exists(cfg["cyrus_conf"]) else None)
    clash = pathpolicy.check_apart(cfg.own_directories, lay.data_locations())
    if clash:
        k, d, ck, cd = clash
        raise ConfigError(f"{cfg.path}: {k}: {d} overlaps Cyrus's {ck} {cd} ({lay.imapd_conf}); keep "
                          "borg-cyrus's directories apart from Cyrus's data")
    tools = layout_mod.find_tools(cfg["cyrus_tools_directory"])
    return Context(config=cfg, layout=lay, tools=tools, runner=runner, plugins=plugins)


def plan_locations(ctx):
    """All locations, with a one-line error for a required one that is missing."""
    out = []
    for loc in ctx.plugins.locations(ctx):
        if loc.kind == "dump" or os.path.lexists(loc.path):
            out.append(loc)
        elif loc.required:
            raise BorgCyrusError(f"{loc.what}: {loc.path} does not exist; fix {ctx.layout.imapd_conf} "
                                 f"or the borg-cyrus config ({ctx.config.path})")
        else:
            log.debug("skipping %s: %s does not exist", loc.what, loc.path)
    return out


def check_tools(ctx):
    missing = ctx.tools.missing(layout_mod.REQUIRED_TOOLS)
    if missing:
        ctx.tools[missing[0]]  # raises the one-line error


# -- teardown ---------------------------------------------------------------

def teardown(ctx, st):
    """Undo every recorded step, newest first; keep going on errors.

    Returns the list of error messages; the state file is removed only when
    every step was undone.
    """
    modes = ctx.plugins.modes()
    errors = []
    for step in reversed(st.steps):
        cls = modes.get(step.get("mode"))
        if cls is None:
            errors.append(f"step {step.get('kind')} belongs to mode {step.get('mode')!r}, which no plugin provides")
            continue
        try:
            cls(ctx).undo(step)
            st.drop(step)
            faults.point("teardown")
        except Exception as e:  # one failed step must not stop the others
            log.error("undoing %s (%s) failed: %s", step.get("kind"), step.get("mode"), e)
            errors.append(f"{step.get('kind')}: {e}")
    if not errors:
        st.remove()
    return errors


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
    age = _run_age(data)
    if state_mod.is_alive(prev):
        if age is not None and age > ctx.config["busy"]["max_run_age"]:
            return [f"a backup started {data.get('started')} by {prev.get('comm')} (pid {prev.get('pid')}) has run "
                    f"for {age / 3600:.1f} h, longer than busy.max_run_age: it looks stuck ({what}); stop it, "
                    "then run `borg-cyrus after`"]
        return []
    return [f"a backup started {data.get('started')} (mode {data.get('mode')}) ended without `after` and left: "
            f"{what}; run `borg-cyrus after` to undo it (the next backup would too)"]


def _run_age(data):
    try:
        started = datetime.datetime.fromisoformat(data.get("started"))
    except (TypeError, ValueError):
        return None
    return (datetime.datetime.now().astimezone() - started).total_seconds()


class Deadline:
    """SIGALRM after `seconds`: the run fails with DeadlineError (and undoes
    what it did) instead of hanging with Cyrus stopped."""

    def __init__(self, seconds, what):
        self.seconds, self.what = seconds, what
        self.old = None

    def _fire(self, signum, frame):
        self.cancel()
        raise DeadlineError(f"{self.what} did not finish within {self.seconds:g} s (run_timeout); undoing it. "
                            "Find what hangs (a tool, a filesystem) or raise run_timeout")

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
    age = _run_age(data)
    limit = ctx.config["busy"]["max_run_age"]
    if age is not None and age > limit:
        raise BusyError(f"a backup started {data.get('started')} by {prev.get('comm')} (pid {prev.get('pid')}) "
                        f"has been running for {age / 3600:.1f} h, longer than busy.max_run_age ({limit:g} s): it "
                        "looks stuck; stop it, then run `borg-cyrus after` to clean up")
    return data


def busy_error(ctx, data):
    prev = data.get("owner") or {}
    cls = SkipError if ctx.config["busy"]["action"] == "skip" else BusyError
    return cls(f"a backup started {data.get('started')} by {prev.get('comm')} (pid {prev.get('pid')}) is still "
               f"running after waiting {ctx.config['busy']['wait']:g} s (busy.wait); "
               + ("skipping this one (busy.action: skip)" if cls is SkipError else
                  "this run fails. If that backup is not running, run `borg-cyrus after --force` to clean up"))


def recover_stale(ctx, owner, force=False):
    """Handle a state file left by an earlier run before starting a new one."""
    st = state_mod.State(ctx.state_file)
    data = st.load()
    if data is None:
        return
    prev = data.get("owner")
    if state_mod.is_alive(prev) and not force:
        if prev == owner:
            log.warning("an earlier `before` of this same backup run did not finish; undoing it")
        else:
            raise BusyError(
                f"a backup started {data.get('started')} by {prev.get('comm')} (pid {prev.get('pid')}) is still "
                "running; if it is not, run `borg-cyrus after --force` to clean up")
    log.warning("cleaning up after an earlier run that did not finish (started %s, mode %s): %s",
                data.get("started"), data.get("mode"),
                "; ".join(describe_step(ctx, s) for s in st.steps) or "nothing to undo")
    errors = teardown(ctx, st)
    if errors:
        raise BorgCyrusError("could not clean up an earlier run: " + "; ".join(errors))


# -- before -----------------------------------------------------------------

def _fresh_dump_dir(ctx):
    work = ctx.work_dir
    for name in os.listdir(work):
        if name.startswith(("dump.new-", "dump.old-")):
            shutil.rmtree(os.path.join(work, name), ignore_errors=True)
    path = os.path.join(work, f"dump.new-{os.getpid()}")
    os.mkdir(path, 0o700)
    return path


def _publish_dump_dir(ctx, new):
    final = ctx.dump_dir
    old = os.path.join(ctx.work_dir, f"dump.old-{os.getpid()}")
    if os.path.lexists(final):
        os.rename(final, old)
    os.rename(new, final)
    shutil.rmtree(old, ignore_errors=True)


def parent_dirs(lay):
    """Owner and mode of every directory above Cyrus's locations, so a full
    restore can give the ones `borg extract` creates (root 0700) their own back."""
    import grp
    import pwd
    out = {}
    for _key, loc in lay.data_locations():
        p = os.path.dirname(loc)
        while p not in ("", "/") and p not in out:
            try:
                st = os.stat(p)
            except OSError:
                break
            try:
                user = pwd.getpwuid(st.st_uid).pw_name
            except KeyError:
                user = None
            try:
                group = grp.getgrgid(st.st_gid).gr_name
            except KeyError:
                group = None
            out[p] = {"mode": stat.S_IMODE(st.st_mode), "uid": st.st_uid, "gid": st.st_gid, "user": user,
                      "group": group}
            p = os.path.dirname(p)
    return out


def write_manifest(ctx, dump_dir, records, view, timings):
    boxes = ctx.mailboxes or []
    users = {mb.userid for mb in boxes if mb.userid and mb.has_spool}
    m = ctx.manifest
    m.update({
        "format": 1,
        "borg_cyrus_version": __version__,
        "created": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "hostname": socket.gethostname(),
        "mode": ctx.config["mode"],
        "view": view.description,
        "blocked_seconds": view.blocked_seconds,
        "imapd_conf": ctx.layout.imapd_conf,
        "work_directory": ctx.work_dir,
        "layout": ctx.layout.to_json(),
        "parents": parent_dirs(ctx.layout),
        "dumps": [r.to_json() for r in records],
        "timings": {k: round(v, 3) for k, v in timings.items()},
    })
    m.setdefault("counts", {}).update({"mailboxes": len(boxes), "users": len(users)})
    # compact: at 100k mailboxes an indented, sorted dump costs seconds
    state_mod.write_atomic(os.path.join(dump_dir, "manifest.json"), json.dumps(m, separators=(",", ":")) + "\n")


def _consistency(ctx, records, view):
    """Cross-check the JSON dump against the binary dump of mailboxes.db."""
    by_name = {r.name: r for r in records}
    js, db = by_name.get("mailboxes.json"), by_name.get("mailboxes.db.batch")
    if not js or not db:
        return
    n = db.extra.get("name_records")
    if n is not None and n != js.records:
        msg = (f"mailboxes.json lists {js.records} mailboxes but mailboxes.db.batch holds {n}; "
               "the server changed between the two dumps")
        if view.description == "live":
            log.warning("%s (expected in live mode)", msg)
            ctx.problems.append(msg)
        else:
            raise BorgCyrusError(msg + " although it was frozen")


def _disk_full(path, margin=64 * 1024):
    try:
        st = os.statvfs(path)
    except OSError:
        return False
    return st.f_bavail * st.f_frsize < margin


def run_dumps(ctx, view):
    dump_dir = _fresh_dump_dir(ctx)
    records = []
    try:
        for plugin, recs in ctx.plugins.dump_each(ctx, view, dump_dir):
            for r in recs:
                r.plugin = r.plugin or plugin
            records.extend(recs)
    except OSError as e:
        shutil.rmtree(dump_dir, ignore_errors=True)
        raise BorgCyrusError(f"writing the dumps into {ctx.work_dir} failed: {e.strerror}"
                             f"{'; free space there or move work_directory' if e.errno == 28 else ''}") from None
    except BorgCyrusError as e:
        # Cyrus tools write their dumps to our file and may not notice a full disk:
        # the dump then looks truncated. Say what really happened.
        full = _disk_full(dump_dir)
        shutil.rmtree(dump_dir, ignore_errors=True)
        if full:
            raise BorgCyrusError(f"writing the dumps into {ctx.work_dir} failed: No space left on device "
                                 f"({e}); free space there or move work_directory") from None
        raise
    except BaseException:
        shutil.rmtree(dump_dir, ignore_errors=True)
        raise
    return dump_dir, records


def before(ctx, force=False):
    """Prepare a backup. Returns a summary dict."""
    check_tools(ctx)
    modes = ctx.plugins.modes()
    mode = modes[ctx.config["mode"]](ctx)
    owner = state_mod.find_owner()
    state_mod.secure_dir(ctx.work_dir, WORK_DIR_MODE)
    if ctx.dry_run:
        return _before_dry_run(ctx, mode, time.monotonic())
    busy = ctx.config["busy"]
    give_up = time.monotonic() + busy["wait"]
    with Deadline(ctx.config["run_timeout"], "before") as deadline:
        while True:
            with contextlib.ExitStack() as stack:
                try:
                    stack.enter_context(state_mod.lock(ctx.lock_file, wait=max(0.0, give_up - time.monotonic())))
                except BusyError as e:
                    raise (SkipError(f"{e}; skipping this run (busy.action: skip)") if busy["action"] == "skip"
                           else e) from None
                data = other_run(ctx, owner, force)
                if data is None:
                    return _before_locked(ctx, modes, mode, owner, force, deadline)
            if time.monotonic() >= give_up:
                raise busy_error(ctx, data)
            log.info("waiting for the backup started %s (pid %s) to finish", data.get("started"),
                     (data.get("owner") or {}).get("pid"))
            time.sleep(min(2.0, max(0.1, give_up - time.monotonic())))


def _before_locked(ctx, modes, mode, owner, force, deadline):
    t_start = time.monotonic()
    timings = {}
    mode_name = mode.name
    faults.point("locked")
    recover_stale(ctx, owner, force)
    for cls in modes.values():
        cls(ctx).cleanup_stale()
    st = state_mod.State(ctx.state_file)
    st.begin(mode_name, owner)
    ctx.state = st
    try:
        locs = plan_locations(ctx)
        data = [loc for loc in locs if loc.kind == "data"]
        t = time.monotonic()
        view = mode.freeze(data)
        timings["freeze"] = time.monotonic() - t
        st.set(view={"description": view.description, "prefixes": view.prefixes,
                     "blocked_seconds": view.blocked_seconds})
        if view.blocked_seconds is not None:
            log.info("write-blocked window %.1f ms (%s)", view.blocked_seconds * 1000, view.description)
        ctx.plugins.pm.hook.view_ready(ctx=ctx, view=view)
        summary = _prepare(ctx, view, locs, timings)
        st.set(phase="ready", patterns=ctx.patterns_file)
        for step in st.steps:
            if step["kind"] == "watchdog":
                Watchdog.before_done(step.get("process"))
    except BaseException:
        deadline.cancel()     # the undo must not be cut short
        log.info("before failed; undoing what it did")
        errors = teardown(ctx, st)
        for err in errors:
            log.error("cleanup: %s", err)
        raise
    summary["seconds"] = time.monotonic() - t_start
    log.info("before: ready in %.2f s — mode %s, %d mailboxes, %d messages, %d roots, %d excludes",
             summary["seconds"], mode_name, summary["mailboxes"], summary["messages"], summary["roots"],
             summary["excludes"])
    return summary


def _prepare(ctx, view, locs, timings, dump_dir=None):
    t = time.monotonic()
    dump_dir, records = run_dumps(ctx, view)
    timings["dumps"] = time.monotonic() - t
    faults.point("dumped")
    try:
        _consistency(ctx, records, view)
        t = time.monotonic()
        consistency.report(ctx, view, counts=ctx.config["dumps"]["message_counts"])
        timings["counts"] = time.monotonic() - t
        t = time.monotonic()
        excludes = ctx.plugins.excludes(ctx, view)
        timings["excludes"] = time.monotonic() - t
        ctx.manifest["problems"] = ctx.problems
        write_manifest(ctx, dump_dir, records, view, timings)
    except BaseException:
        shutil.rmtree(dump_dir, ignore_errors=True)
        raise
    roots = nest_free([loc.path for loc in locs])
    text = patterns.render(roots, excludes, view,
                           comment=f"mode {ctx.config['mode']}, {datetime.datetime.now().isoformat(timespec='seconds')}")
    if ctx.dry_run:
        shutil.rmtree(dump_dir, ignore_errors=True)
    else:
        _publish_dump_dir(ctx, dump_dir)
        state_mod.write_atomic(ctx.patterns_file, text, mode=0o600)
        faults.point("patterns-written")
    return {"mailboxes": len(ctx.mailboxes or []), "messages": ctx.manifest.get("counts", {}).get("messages", 0),
            "roots": len(roots), "excludes": len(excludes), "patterns": text, "dumps": records}


def _before_dry_run(ctx, mode, t_start):
    ctx.state = state_mod.MemoryState()
    ctx.state.begin(mode.name, None)
    locs = plan_locations(ctx)
    view = mode.freeze([loc for loc in locs if loc.kind == "data"])
    summary = _prepare(ctx, view, locs, {})
    summary["seconds"] = time.monotonic() - t_start
    return summary


# -- after ------------------------------------------------------------------

def after(ctx, force=False):
    """Tear down what `before` set up. Idempotent."""
    t0 = time.monotonic()
    state_mod.secure_dir(ctx.work_dir, WORK_DIR_MODE)
    with Deadline(ctx.config["run_timeout"], "after"), \
            state_mod.lock(ctx.lock_file, wait=ctx.config["busy"]["wait"]):
        st = state_mod.State(ctx.state_file)
        data = st.load()
        if data is None:
            if not ctx.dry_run:
                for cls in ctx.plugins.modes().values():
                    cls(ctx).cleanup_stale()
            log.info("after: nothing to tear down")
            return {"seconds": time.monotonic() - t0, "undone": 0}
        owner = state_mod.find_owner()
        prev = data.get("owner")
        if state_mod.is_alive(prev) and prev != owner and not force:
            log.warning("the recorded backup belongs to %s (pid %s), which is still running; leaving it alone "
                        "(use --force if it is not a backup)", prev.get("comm"), prev.get("pid"))
            return {"seconds": time.monotonic() - t0, "undone": 0, "skipped": True}
        ctx.state = st
        modes = ctx.plugins.modes()
        problems = []
        cls = modes.get(data.get("mode"))
        if cls is not None:
            problems = cls(ctx).check(data)
        n = len(st.steps)
        errors = teardown(ctx, st)
    secs = time.monotonic() - t0
    if errors:
        raise BorgCyrusError("after: could not undo everything: " + "; ".join(errors))
    if problems:
        raise BorgCyrusError("the backup read a broken view and must not be trusted: " + "; ".join(problems))
    log.info("after: done in %.2f s (%d step(s) undone)", secs, n)
    return {"seconds": secs, "undone": n}
