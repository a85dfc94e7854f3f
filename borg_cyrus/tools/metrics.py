"""Metrics of every run: a Prometheus textfile (node_exporter's textfile
collector, `metrics.textfile`, off by default) and the `--json` summaries.

The values of every command live in <work_directory>/metrics.json, so one
command's run keeps the others' values; the textfile is rendered from it and
replaced atomically (a new temp file in the same directory, fsync, rename,
0644; the directory must be root's and writable by nobody else).
A backup spans two processes: `before` leaves its values there for the
`after` of the same borgmatic run (matched by the owning process), and a
failed `before` is recorded at once (and again by `after`, still failed).
Writing metrics never fails a command: it logs a warning.

    with metrics.Run(ctx, "restore", as_json=True, what="user") as run:
        ...                       # an exception records a failure
        run.values.update(n=3)    # run.conclude(ok) for a failure without one
"""

import contextlib
import fcntl
import json
import logging
import math
import os
import sys
import time

from borg_cyrus import state as state_mod
from borg_cyrus.errors import SkipError

log = logging.getLogger(__name__)

STATE = "metrics.json"
PENDING_MAX_AGE = 7 * 86400  # a `before` whose `after` never came is forgotten after this

# name -> (help, where the value comes from: "run" per command, or a backup/verify value)
PER_RUN = {
    "last_run_start_timestamp_seconds": ("started", "Start of the command's last run (Unix time)."),
    "last_run_end_timestamp_seconds": ("ended", "End of the command's last run (Unix time)."),
    "last_run_duration_seconds": ("duration_seconds", "Duration of the command's last run."),
    "last_run_success": ("success", "1 if the command's last run succeeded, else 0."),
    "last_success_timestamp_seconds": ("last_success", "End of the command's last successful run (Unix time)."),
}
VALUES = {
    "backup": {
        "mailboxes": "Mailboxes in the last backup's manifest.",
        "messages": "Messages in the last backup's manifest.",
        "bytes": "Message bytes in the last backup's manifest.",
        "excluded_mailboxes": "Mailboxes whose messages the last backup left out (exclude.mailboxes).",
        "excluded_messages": "Messages the last backup left out by size/age rules (exclude.rules).",
        "consistency_findings": "Problems the last backup's consistency checks found (warnings).",
        "write_blocked_seconds": "Seconds Cyrus could not write during the last backup.",
    },
    "verify": {
        "mailboxes": "Mailboxes the last verify checked.",
        "messages": "Message files the last verify checked.",
        "failed_mailboxes": "Mailboxes the last verify found differing (0 when it passed).",
    },
}


def textfile(ctx):
    return (ctx.config.get("metrics") or {}).get("textfile")


def _fmt(v):
    if isinstance(v, bool):
        return "1" if v else "0"
    if isinstance(v, float) and (math.isnan(v) or math.isinf(v)):
        return "NaN" if math.isnan(v) else ("+Inf" if v > 0 else "-Inf")
    return repr(round(v, 3)) if isinstance(v, float) else str(int(v))


def render(commands):
    """The textfile for {command: record} (records as `state` keeps them)."""
    out = []
    for name, (key, help_) in PER_RUN.items():
        rows = [(c, r.get(key)) for c, r in sorted(commands.items()) if isinstance(r.get(key), int | float)]
        if rows:
            out += [f"# HELP borg_cyrus_{name} {help_}", f"# TYPE borg_cyrus_{name} gauge"]
            out += [f'borg_cyrus_{name}{{command="{c}"}} {_fmt(v)}' for c, v in rows]
    for command, names in VALUES.items():
        vals = (commands.get(command) or {}).get("values") or {}
        for name, help_ in names.items():
            v = vals.get(name)
            if isinstance(v, int | float):
                full = f"borg_cyrus_{command}_{name}"
                out += [f"# HELP {full} {help_}", f"# TYPE {full} gauge", f"{full} {_fmt(v)}"]
    return "\n".join(out) + "\n"


def write_textfile(path, text):
    """Atomically, mode 0644 (state.write_atomic: the collector never reads the
    temp file, nothing planted in the directory is used, and a directory that
    another user can change is refused)."""
    state_mod.write_atomic(path, text, 0o644)


@contextlib.contextmanager
def _state(ctx):
    """The metrics state, locked, written back when the block ends."""
    state_mod.secure_dir(ctx.work_dir, state_mod.WORK_DIR_MODE)
    path = os.path.join(ctx.work_dir, STATE)
    fd = os.open(path + ".lock", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            with open(path) as f:
                data = json.load(f)
        except (FileNotFoundError, ValueError):
            data = {}
        if not isinstance(data, dict):
            data = {}
        data.setdefault("commands", {})
        data.setdefault("pending", [])
        yield data
        state_mod.write_atomic(path, json.dumps(data, indent=1) + "\n")
    finally:
        os.close(fd)


def _publish(ctx, commands):
    path = textfile(ctx)
    if path:
        write_textfile(path, render(commands))


def backup_values(manifest):
    """The backup values of a manifest (manifest.py's dict)."""
    counts = manifest.get("counts") or {}
    rules = (manifest.get("excluded_messages") or {}).get("totals") or {}
    blocked = manifest.get("blocked_seconds")
    if blocked is None and manifest.get("mode") in ("live", "dumps-only"):
        blocked = 0.0
    out = {
        "mode": manifest.get("mode"),
        "mailboxes": counts.get("mailboxes", 0),
        "messages": counts.get("messages", 0),
        "bytes": counts.get("bytes", 0),
        "excluded_mailboxes": len(manifest.get("excluded_mailboxes") or []),
        "excluded_messages": rules.get("messages", 0),
        "consistency_findings": len(manifest.get("problems") or []),
    }
    if blocked is not None:
        out["write_blocked_seconds"] = blocked
    return out


class Run:
    """One command's run; recorded when the block ends (an exception: failure)."""

    def __init__(self, ctx, command, as_json=False, **fields):
        self.ctx, self.command, self.as_json = ctx, command, as_json
        self.fields = fields  # JSON only (what was restored, the archive)
        self.values = {}
        self.started = time.time()
        self.ok = None

    def __enter__(self):
        return self

    def conclude(self, ok, **values):
        """Set the result of a run that ends without an exception; returns the
        JSON fields the run's own report adds."""
        self.ok = ok
        self.values.update(values)
        self.ended = time.time()
        return self.summary()

    def summary(self, error=None):
        ended = getattr(self, "ended", None) or time.time()
        out = {
            "command": self.command,
            **self.fields,
            "result": "success" if self.ok else "failure",
            "started": round(self.started, 3),
            "ended": round(ended, 3),
            "duration_seconds": round(ended - self.started, 3),
            **self.values,
        }
        if error:
            out["error"] = error
        return out

    def __exit__(self, exc_type, exc, tb):
        if isinstance(exc, SkipError) or self.ctx is None or self.ctx.dry_run:
            return False
        if exc is not None:
            self.ok = False
        elif self.ok is None:
            self.ok = True
        error = (str(exc) or exc.__class__.__name__) if exc is not None else None
        rec = self.summary(error)
        try:
            self.record(rec)
        except Exception as e:  # metrics never fail the command
            log.warning("could not write the metrics: %s", e)
        if self.as_json:
            sys.stdout.write(json.dumps(rec, ensure_ascii=False) + "\n")
        return False

    def record(self, rec):
        with _state(self.ctx) as data:
            self.store(data, rec)
            commands = data["commands"]
        _publish(self.ctx, commands)

    def store(self, data, rec):
        prev = data["commands"].get(self.command) or {}
        entry = {
            "started": rec["started"],
            "ended": rec["ended"],
            "duration_seconds": rec["duration_seconds"],
            "success": rec["result"] == "success",
            "last_success": rec["ended"] if rec["result"] == "success" else prev.get("last_success"),
            # a run that failed before it counted keeps the last values
            "values": {**(prev.get("values") or {}), **self.values},
        }
        data["commands"][self.command] = entry


def restore_run(ctx, args):
    """The Run of a restore verb that changes the server (not list, history)."""
    if args.restore_command not in ("user", "mailbox", "full"):
        return contextlib.nullcontext()
    target = getattr(args, args.restore_command, None)
    return Run(ctx, "restore", as_json=args.json, what=args.restore_command, target=target)


class Before(Run):
    """`before`: a success leaves its values for `after`; a failure is
    recorded now (borgmatic may not run `after`)."""

    def __init__(self, ctx, dumps_only=False):
        super().__init__(ctx, "dumps_only" if dumps_only else "backup")
        self.dumps_only = dumps_only
        self.owner = state_mod.find_owner()

    def ready(self, summary):
        self.values.update(backup_values(summary.get("manifest") or {}))

    def record(self, rec):
        if self.dumps_only:  # no `after`: the run ends here
            return super().record(rec)
        with _state(self.ctx) as data:
            now = time.time()
            data["pending"] = [
                p
                for p in data["pending"]
                if p.get("owner") != self.owner and now - p.get("started", 0) < PENDING_MAX_AGE
            ]
            data["pending"].append({"owner": self.owner, **rec, "values": self.values})
            if rec["result"] != "success":
                self.store(data, rec)
            commands = data["commands"]
        if rec["result"] != "success":
            _publish(self.ctx, commands)


class After(Run):
    """`after`: the backup's record, from `before`'s values and the outcome
    (failed: `before` failed, `after` failed, or borgmatic says so: --failed)."""

    def __init__(self, ctx, failed=False, as_json=False):
        super().__init__(ctx, "backup", as_json=as_json)
        self.failed = failed
        self.owner = state_mod.find_owner()

    def record(self, rec):
        with _state(self.ctx) as data:
            mine = [p for p in data["pending"] if p.get("owner") == self.owner]
            data["pending"] = [p for p in data["pending"] if p.get("owner") != self.owner]
            if not mine:
                log.debug("metrics: no `before` of this run recorded; backup metrics unchanged")
                rec.update(result=None, note="no `before` of this run was recorded")
                return
            pend = mine[-1]
            ok = rec["result"] == "success" and pend.get("result") == "success" and not self.failed
            self.values = dict(pend.get("values") or {})
            if self.values.get("mode") == "stop-master":  # Cyrus was stopped from before to after
                self.values["write_blocked_seconds"] = round(rec["ended"] - pend["started"], 3)
            error = rec.get("error") or pend.get("error") or ("borgmatic reported a failure" if self.failed else None)
            rec.update(self.values, started=pend["started"], result="success" if ok else "failure")
            rec["duration_seconds"] = round(rec["ended"] - rec["started"], 3)
            if error and not ok:
                rec["error"] = error
            self.store(data, rec)
            commands = data["commands"]
        _publish(self.ctx, commands)
