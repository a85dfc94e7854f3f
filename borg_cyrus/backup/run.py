"""`before` and `after`: the backup run around borgmatic's `borg create`.

before: lock (waiting while another backup runs, busy.py) -> undo a dead
run -> plan the locations -> the mode freezes a view (every change recorded
in the state file before it is made) -> the mailbox list -> every plugin's
dumps -> consistency and counts -> excludes -> manifest.json (built from all
of them, manifest.py) -> the borg patterns file.
after: undo what the state file records, newest first. Each step returns
its result to the next; plugins do not write to the context.
"""

import contextlib
import datetime
import json
import logging
import os
import shutil
import time

from borg_cyrus import faults, state as state_mod
from borg_cyrus.backup import busy, consistency, manifest, patterns
from borg_cyrus.cyrus import layout as layout_mod
from borg_cyrus.errors import BorgCyrusError, BusyError, SkipError
from borg_cyrus.model import View, nest_free
from borg_cyrus.providers.watchdog import Watchdog

log = logging.getLogger(__name__)

WORK_DIR_MODE = state_mod.WORK_DIR_MODE


def plan_locations(ctx):
    """All locations, with a one-line error for a required one that is missing."""
    out = []
    for loc in ctx.plugins.locations(ctx):
        if loc.kind == "dump" or os.path.lexists(loc.path):
            out.append(loc)
        elif loc.required:
            raise BorgCyrusError(
                f"{loc.what}: {loc.path} does not exist; fix {ctx.layout.imapd_conf} "
                f"or the borg-cyrus config ({ctx.config.path})"
            )
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


def recover_stale(ctx, owner, force=False, by="before"):
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
                "running; if it is not, run `borg-cyrus after --force` to clean up"
            )
    _undo_dead_run(ctx, st, data, by)


def recover_dead_run(ctx, by, take_lock=False):
    """Any later run that takes the lock (a database-only backup, a restore,
    verify): undo what a backup that died left behind (Cyrus stopped, a
    filesystem frozen, a snapshot mounted) before doing its own work. A backup
    still running is left alone (its `after` undoes it). take_lock: try the
    lock without waiting (busy: the run holding it recovers by itself)."""
    if take_lock:
        state_mod.secure_dir(ctx.work_dir, WORK_DIR_MODE)
        try:
            with state_mod.lock(ctx.lock_file, wait=0):
                return recover_dead_run(ctx, by)
        except BusyError:
            return False
    st = state_mod.State(ctx.state_file)
    data = st.load()
    if data is None or state_mod.is_alive(data.get("owner")):
        return False
    _undo_dead_run(ctx, st, data, by)
    return True


def recovered_path(ctx):
    """What the last recovery of a dead run found and did (for doctor, until a backup completes)."""
    return os.path.join(ctx.work_dir, "recovered.json")


def _undo_dead_run(ctx, st, data, by):
    left = "; ".join(busy.describe_step(ctx, s) for s in st.steps) or "nothing to undo"
    log.warning(
        "cleaning up after an earlier run that did not finish (started %s, mode %s): %s",
        data.get("started"),
        data.get("mode"),
        left,
    )
    if ctx.dry_run:
        log.info("dry run: would undo it")
        return
    errors = teardown(ctx, st)
    record = {
        "at": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "by": by,
        "started": data.get("started"),
        "mode": data.get("mode"),
        "owner": data.get("owner"),
        "left": left,
        "errors": errors,
    }
    state_mod.write_atomic(recovered_path(ctx), json.dumps(record, indent=1) + "\n")
    if errors:
        raise BorgCyrusError(
            f"could not clean up an earlier run (started {data.get('started')}, mode {data.get('mode')}): "
            + "; ".join(errors)
            + "; fix that, then run `borg-cyrus after`"
        )


def last_recovery(ctx):
    """One line on the last dead run the next run had to clean up after, or None (a backup completed since)."""
    try:
        fd = os.open(recovered_path(ctx), os.O_RDONLY | os.O_NOFOLLOW)
    except FileNotFoundError:
        return None
    except OSError as e:
        return f"{recovered_path(ctx)}: cannot read it ({e.strerror})"
    try:
        with os.fdopen(fd) as f:
            rec = json.load(f)
    except ValueError:
        return f"{recovered_path(ctx)} is unreadable; remove it"
    owner = rec.get("owner") or {}
    errors = rec.get("errors") or []
    return (
        f"a backup started {rec.get('started')} (mode {rec.get('mode')}, {owner.get('comm') or '?'} pid "
        f"{owner.get('pid') or '?'}) ended without `after` and left: {rec.get('left')}; `borg-cyrus {rec.get('by')}` "
        f"at {rec.get('at')} "
        + (f"could not undo it all: {'; '.join(errors)}" if errors else "undid it")
        + ". Find out what killed that run (its log, the journal, watchdog.log); this stays reported until a "
        "backup completes"
    )


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


def cross_check(mailbox_list, records, view):
    """The JSON dump against the binary dump of mailboxes.db: problems (live
    mode) or an error (a frozen view cannot change between the two)."""
    db = next((r for r in records if r.name == "mailboxes.db.batch"), None)
    n = db.extra.get("name_records") if db else None
    if n is None or n == mailbox_list.record.records:
        return []
    msg = (
        f"mailboxes.json lists {mailbox_list.record.records} mailboxes but mailboxes.db.batch holds {n}; "
        "the server changed between the two dumps"
    )
    if view.description != "live":
        raise BorgCyrusError(msg + " although it was frozen")
    log.warning("%s (expected in live mode)", msg)
    return [msg]


def _disk_full(path, margin=64 * 1024):
    try:
        st = os.statvfs(path)
    except OSError:
        return False
    return st.f_bavail * st.f_frsize < margin


def run_dumps(ctx, view, dump_dir):
    """The mailbox list, then every plugin's dumps: (MailboxList, records)."""
    try:
        mlist = ctx.plugins.mailbox_list(ctx, view, dump_dir)
        if mlist is None:
            raise BorgCyrusError(
                "no plugin dumped the mailbox list (is the built-in `dumps` plugin disabled "
                "through BORG_CYRUS_PLUGINS?)"
            )
        mlist.record.plugin = mlist.record.plugin or "dumps"
        return mlist, ctx.plugins.dump(ctx, view, dump_dir, mlist.mailboxes)
    except OSError as e:
        raise BorgCyrusError(
            f"writing the dumps into {ctx.work_dir} failed: {e.strerror}"
            f"{'; free space there or move work_directory' if e.errno == 28 else ''}"
        ) from None
    except BorgCyrusError as e:
        # Cyrus tools write their dumps to our file and may not notice a full disk:
        # the dump then looks truncated. Say what really happened.
        if _disk_full(dump_dir):
            raise BorgCyrusError(
                f"writing the dumps into {ctx.work_dir} failed: No space left on device "
                f"({e}); free space there or move work_directory"
            ) from None
        raise


def before(ctx, force=False, dumps_only=False):
    """Prepare a backup. Returns a summary dict."""
    check_tools(ctx)
    modes = ctx.plugins.modes()
    mode = modes[ctx.config["mode"]](ctx)
    owner = state_mod.find_owner()
    state_mod.secure_dir(ctx.work_dir, WORK_DIR_MODE)
    if dumps_only:
        return before_dumps_only(ctx, owner)
    if ctx.dry_run:
        return _before_dry_run(ctx, mode, time.monotonic())
    cfg = ctx.config["busy"]
    give_up = time.monotonic() + cfg["wait"]
    with busy.Deadline(ctx.config["run_timeout"], "before") as deadline:
        while True:
            with contextlib.ExitStack() as stack:
                try:
                    stack.enter_context(state_mod.lock(ctx.lock_file, wait=max(0.0, give_up - time.monotonic())))
                except BusyError as e:
                    raise (
                        SkipError(f"{e}; skipping this run (busy.action: skip)") if cfg["action"] == "skip" else e
                    ) from None
                data = busy.other_run(ctx, owner, force)
                if data is None:
                    return _before_locked(ctx, modes, mode, owner, force, deadline)
            if time.monotonic() >= give_up:
                raise busy.busy_error(ctx, data)
            log.info(
                "waiting for the backup started %s (pid %s) to finish",
                data.get("started"),
                (data.get("owner") or {}).get("pid"),
            )
            time.sleep(min(2.0, max(0.1, give_up - time.monotonic())))


def _before_locked(ctx, modes, mode, owner, force, deadline):
    t_start = time.monotonic()
    timings = {}
    mode_name = mode.name
    faults.point("locked")
    recover_stale(ctx, owner, force, by="before")
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
        st.set(
            view={"description": view.description, "prefixes": view.prefixes, "blocked_seconds": view.blocked_seconds}
        )
        if view.blocked_seconds is not None:
            log.info("write-blocked window %.1f ms (%s)", view.blocked_seconds * 1000, view.description)
        ctx.plugins.view_ready(ctx, view)
        summary = prepare(ctx, view, locs, timings)
        st.set(phase="ready", patterns=ctx.patterns_file)
        for step in st.steps:
            if step["kind"] == "watchdog":
                Watchdog.before_done(step.get("process"))
    except BaseException:
        deadline.cancel()  # the undo must not be cut short
        log.info("before failed; undoing what it did")
        errors = teardown(ctx, st)
        for err in errors:
            log.error("cleanup: %s", err)
        raise
    summary["seconds"] = time.monotonic() - t_start
    log.info(
        "before: ready in %.2f s — mode %s, %d mailboxes, %d messages, %d roots, %d excludes",
        summary["seconds"],
        mode_name,
        summary["mailboxes"],
        summary["messages"],
        summary["roots"],
        summary["excludes"],
    )
    return summary


def before_dumps_only(ctx, owner):
    """The frequent database-only run: the dumps and the configs, read live
    (the dump tools block no delivery); nothing is stopped, frozen or
    snapshotted, so nothing is recorded for `after`. While a full backup runs
    its dumps are newer than these would be: skipped (exit 75)."""
    t0 = time.monotonic()
    with (
        busy.Deadline(ctx.config["run_timeout"], "before --dumps-only"),
        state_mod.lock(ctx.lock_file, wait=ctx.config["busy"]["wait"]),
    ):
        data = busy.other_run(ctx, owner)
        if data is not None:
            raise SkipError(
                f"a backup started {data.get('started')} is running and dumps the databases itself; "
                "skipping this database-only run"
            )
        # a nightly that died with its dead-man switch may have left Cyrus stopped
        recover_dead_run(ctx, "before --dumps-only")
        _warn_if_stopped(ctx)
        locs = [loc for loc in plan_locations(ctx) if loc.kind != "data"]
        view = View(imapd_conf=ctx.layout.imapd_conf, layout=ctx.layout)
        summary = prepare(ctx, view, locs, {}, dumps_only=True)
    summary["seconds"] = time.monotonic() - t0
    log.info(
        "before --dumps-only: ready in %.2f s — %d mailboxes, %d dump(s), %d roots",
        summary["seconds"],
        summary["mailboxes"],
        len(summary["dumps"]),
        summary["roots"],
    )
    return summary


def _warn_if_stopped(ctx):
    """A database-only run reads Cyrus's databases whether or not it runs:
    say so when nothing serves mail (a stop no state file of this work
    directory explains)."""
    from borg_cyrus.cyrus.service import Service

    svc = Service(ctx.config["service"], ctx.runner)
    if not svc.is_running():
        log.warning(
            "Cyrus is not running (%s) and no borg-cyrus run of %s stopped it; this database-only backup goes on, "
            "but nothing serves mail: start Cyrus, or see `borg-cyrus doctor`",
            svc.describe(),
            ctx.work_dir,
        )


def prepare(ctx, view, locs, timings, dumps_only=False):
    """Dumps, consistency and counts, excludes, manifest, patterns file: each
    step's result is passed to the next, the manifest is built from all.
    dumps_only: no spool is archived, so no counts and no spool excludes."""
    dump_dir = _fresh_dump_dir(ctx)
    try:
        t = time.monotonic()
        mlist, records = run_dumps(ctx, view, dump_dir)
        timings["dumps"] = time.monotonic() - t
        faults.point("dumped")
        problems = cross_check(mlist, records, view)
        t = time.monotonic()
        if dumps_only:
            cons = consistency.Report({"skipped": "database-only backup"}, None, {})
        else:
            cons = consistency.report(ctx, view, mlist.mailboxes, counts=ctx.config["dumps"]["message_counts"])
        problems += cons.problems
        timings["counts"] = time.monotonic() - t
        t = time.monotonic()
        excludes = ctx.plugins.excludes(ctx, view, mlist.mailboxes)
        timings["excludes"] = time.monotonic() - t
        m = manifest.build(ctx, view, mlist, records, cons, excludes, problems, timings, dumps_only=dumps_only)
        manifest.write(dump_dir, m)
    except BaseException:
        shutil.rmtree(dump_dir, ignore_errors=True)
        raise
    roots = nest_free([loc.path for loc in sorted(locs, key=patterns.root_order)])
    text = patterns.render(
        roots,
        [] if dumps_only else excludes,
        view,
        comment=f"{'database-only' if dumps_only else 'mode ' + ctx.config['mode']}, "
        f"{datetime.datetime.now().isoformat(timespec='seconds')}",
    )
    if ctx.dry_run:
        shutil.rmtree(dump_dir, ignore_errors=True)
    else:
        _publish_dump_dir(ctx, dump_dir)
        state_mod.write_atomic(ctx.dumps_patterns_file if dumps_only else ctx.patterns_file, text, mode=0o600)
        faults.point("patterns-written")
    return {
        "mailboxes": len(mlist.mailboxes),
        "messages": m["counts"].get("messages", 0),
        "roots": len(roots),
        "excludes": len(excludes),
        "patterns": text,
        "dumps": [mlist.record, *records],
        "manifest": m,
    }


def _before_dry_run(ctx, mode, t_start):
    ctx.state = state_mod.MemoryState()
    ctx.state.begin(mode.name, None)
    locs = plan_locations(ctx)
    view = mode.freeze([loc for loc in locs if loc.kind == "data"])
    summary = prepare(ctx, view, locs, {})
    summary["seconds"] = time.monotonic() - t_start
    return summary


# -- after ------------------------------------------------------------------


def after(ctx, force=False, failed=False):
    """Tear down what `before` set up. Idempotent. A backup that completed
    (not failed) ends the report of an earlier dead run (last_recovery)."""
    t0 = time.monotonic()
    state_mod.secure_dir(ctx.work_dir, WORK_DIR_MODE)
    with (
        busy.Deadline(ctx.config["run_timeout"], "after"),
        state_mod.lock(ctx.lock_file, wait=ctx.config["busy"]["wait"]),
    ):
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
            log.warning(
                "the recorded backup belongs to %s (pid %s), which is still running; leaving it alone "
                "(use --force if it is not a backup)",
                prev.get("comm"),
                prev.get("pid"),
            )
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
    if not failed and not ctx.dry_run:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(recovered_path(ctx))
    log.info("after: done in %.2f s (%d step(s) undone)", secs, n)
    return {"seconds": secs, "undone": n}
