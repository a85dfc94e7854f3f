"""Write-blocked window per backup, measured from outside.

While `borgmatic create` runs, bench/writer.py delivers a message through
Cyrus's lmtpd every 10 ms (one after the other: on this disk a delivery
fsyncs and takes ~15 ms) and appends a line to a file on the spool's
filesystem every 2 ms. The longest interval between two successful writes
that overlaps the backup is the window a client saw; the same number for
mode `live` (nothing is blocked) is the noise floor under backup load. The
window borg-cyrus reports itself (log line and manifest `blocked_seconds`) is
recorded next to it.
"""

import os
import subprocess
import time

from bench.common import env, log, median, spread
from bench.testbed import manifest
from bench.writer import Writer, count_in, max_gap

# name: (description, borg-cyrus config, work dir, repo, testbed kind)
MODES = {
    "live": ("`live` (nothing blocked: noise floor under backup load)", {"mode": "live"}, "live", "live", "btrfs"),
    "stop-master": (
        "`stop-master` (Cyrus stopped for the whole backup)",
        {"mode": "stop-master"},
        "live",
        "live",
        "btrfs",
    ),
    "rsync-staging": (
        "`rsync-staging` (stopped for one rsync of what changed)",
        {"mode": "rsync-staging"},
        "rsync",
        "rsync",
        "btrfs",
    ),
    "btrfs+stop": (
        "`btrfs`, `quiesce: stop-master` (stopped around the snapshot)",
        {"mode": "btrfs", "snapshot": {"quiesce": "stop-master"}},
        "btrfs",
        "btrfs",
        "btrfs",
    ),
    "btrfs": ("`btrfs` alone (atomic snapshot, nothing stopped)", {"mode": "btrfs"}, "btrfs", "btrfs", "btrfs"),
    "xfs+fsfreeze": (
        "`command` on XFS: fsfreeze + reflink copy of the image",
        {"mode": "command"},
        "xfs",
        "xfs",
        "xfs",
    ),
}
# inside the VM (bench/vm_guest.py): the same measurement for LVM, with `live` as its noise floor
VM_MODES = {
    "live": ("`live` (nothing blocked: noise floor under backup load)", {"mode": "live"}, "live", "live", "lvm"),
    "lvm": (
        "`lvm` (lvcreate -s: device-mapper suspends the LV for the snapshot)",
        {"mode": "lvm", "lvm": {"snapshot_size": "50%ORIGIN"}},
        "lvm",
        "lvm",
        "lvm",
    ),
}
SETTLE = 1.0  # seconds of writer activity before and after each backup
NICE = None  # the backup runs at normal priority (a niced borgmatic would also nice the Cyrus it restarts:
# borg-cyrus's `command` service manager starts the master as its own child); the writers at -10


def has_archives(repo):
    r = subprocess.run(["borg", "list", "--short", repo], capture_output=True, text=True, env=env())
    return bool(r.stdout.strip())


class ModeRun:
    def __init__(self, bench, scale, name, table=MODES):
        desc, bc, workname, reponame, kind = table[name]
        self.name, self.desc = name, desc
        self.bed = bench.testbed(scale, kind)
        self.work = self.bed.work(workname)
        extra = {k: v for k, v in bc.items() if k != "mode"}
        self.bc = self.bed.borg_cyrus_config(name, self.work, bc["mode"], **extra)
        self.repo = self.bed.repo(reponame)
        self.cfg = self.bed.borgmatic_bc(f"blocked-{name}", self.repo, self.work)
        self.probe = os.path.join(self.bed.data, ".bench-writer")
        self.first = None
        if not has_archives(self.repo):
            r, w = self.measure(first=True)
            self.first = w
            log(f"    {name}: first run (cache warm-up) {r.seconds:.1f} s, window {fmt(w['lmtp_gap'])}")

    def measure(self, first=False):
        sb = self.bed.server.sb
        w = Writer(
            os.path.join(self.bed.dir, f"writer-{self.name}.json"),
            lmtp=sb.lmtp_socket,
            rcpt="writer",
            append=self.probe,
        )
        try:
            time.sleep(SETTLE)
            r = self.bed.borgmatic(self.cfg, bc_config=self.bc, nice=NICE)
            time.sleep(SETTLE)
        finally:
            data = w.stop()
        if not sb.running():
            raise RuntimeError(f"{self.name}: Cyrus is not running after the backup")
        m = manifest(self.work)
        lm, ap = data["lmtp"], data["append"]
        res = {
            "seconds": r.seconds,
            "lmtp_gap": max_gap(lm["ok"], r.t0, r.t1)[0],
            "append_gap": max_gap(ap["ok"], r.t0, r.t1)[0],
            "pre_lmtp_gap": max_gap(lm["ok"], r.t0 - SETTLE + 0.05, r.t0)[0],
            "lmtp_ok": count_in(lm["ok"], r.t0, r.t1),
            "lmtp_failed": count_in(lm["fail"], r.t0, r.t1),
            "errors": lm["errors"],
            "blocked_seconds": m.get("blocked_seconds"),
            "log_blocked_ms": r.hooks.get("blocked_ms"),
            "before_s": r.hooks.get("before_s"),
            "after_s": r.hooks.get("after_s"),
            "first": first,
        }
        return r, res


def ensure_server(sb):
    """Cyrus up and answering again after a failed run (a master that does not answer is killed)."""
    if sb.running():
        try:
            sb.wait_ready(10)
            return
        except Exception:
            log("    Cyrus does not answer; killing and restarting it")
            sb.stop(timeout=5)
    sb.start()


def fmt(x):
    if x is None:
        return "-"
    return f"{x * 1000:.0f} ms" if x < 1 else f"{x:.2f} s"


def idle(bench, scale, seconds=5.0, kind="btrfs"):
    """The writer alone, no backup: the noise floor of an idle server."""
    bed = bench.testbed(scale, kind)
    w = Writer(
        os.path.join(bed.dir, "writer-idle.json"),
        lmtp=bed.server.sb.lmtp_socket,
        rcpt="writer",
        append=os.path.join(bed.data, ".bench-writer"),
    )
    t0 = time.monotonic()
    time.sleep(seconds)
    t1 = time.monotonic()
    data = w.stop()
    return {
        "lmtp_gap": max_gap(data["lmtp"]["ok"], t0 + 0.2, t1)[0],
        "append_gap": max_gap(data["append"]["ok"], t0 + 0.2, t1)[0],
        "lmtp_per_s": count_in(data["lmtp"]["ok"], t0, t1) / (t1 - t0),
    }


def run(bench, scale, reps, modes=None, table=MODES, kind="btrfs"):
    modes = modes or tuple(table)
    out = {"scale": scale.name, "scale_desc": scale.describe(), "reps": reps, "modes": {}, "backup_nice": NICE or 0}
    out["idle"] = idle(bench, scale, kind=kind)
    log(
        f"    idle: LMTP {out['idle']['lmtp_per_s']:.0f} deliveries/s, longest gap {fmt(out['idle']['lmtp_gap'])}, "
        f"append gap {fmt(out['idle']['append_gap'])}"
    )
    runners = {name: ModeRun(bench, scale, name, table) for name in modes}
    runs = {name: [] for name in modes}
    failures = {name: [] for name in modes}
    for k in range(reps):
        for name in modes:
            try:
                _r, res = runners[name].measure()
            except Exception as e:  # one failed backup: record it, bring Cyrus back, go on
                msg = str(e).strip().splitlines()
                err = next((ln for ln in msg if "error" in ln.lower()), msg[0] if msg else repr(e))
                failures[name].append(err[:300])
                log(f"    {name:14} #{k + 1}: FAILED: {err[:200]}")
                ensure_server(runners[name].bed.server.sb)
                continue
            runs[name].append(res)
            log(
                f"    {name:14} #{k + 1}: LMTP gap {fmt(res['lmtp_gap']):>8}, append gap {fmt(res['append_gap']):>8}, "
                f"manifest {fmt(res['blocked_seconds']):>8}, backup {res['seconds']:.1f} s"
            )
    for name in modes:
        rs = runs[name]
        out["modes"][name] = {
            "desc": runners[name].desc,
            "runs": rs,
            "first": runners[name].first,
            "lmtp_gap": median([r["lmtp_gap"] for r in rs]),
            "lmtp_gap_range": spread([r["lmtp_gap"] for r in rs]),
            "append_gap": median([r["append_gap"] for r in rs]),
            "append_gap_range": spread([r["append_gap"] for r in rs]),
            "blocked_seconds": median([r["blocked_seconds"] for r in rs]),
            "seconds": median([r["seconds"] for r in rs]),
            "lmtp_failed": median([r["lmtp_failed"] for r in rs]),
            "failed_runs": failures[name],
        }
    return out
