"""Nightly cost on btrfs: first and unchanged-spool runs of borgmatic +
borg-cyrus against plain `borg create` of the live directories and against
borgmatic's own `btrfs:` hook, on the same data, interleaved in one run.

Rows sharing a repository read the same paths, so they share Borg's files
cache (it is keyed on the full path): `plain` and `borgmatic` read the live
directories, `borg-cyrus` and `borg-cyrus (no path check)` read the
snapshot at borg-cyrus's stable mount path. `borgmatic btrfs:` has its own.
"""

import re
import time

from bench.common import drop_caches, env, log, median, ratio, timed

ROWS = {
    "plain": "plain `borg create` of the live directories",
    "borgmatic": "borgmatic, `source_directories`, no hooks (live, inconsistent)",
    "borg-cyrus": "borgmatic + borg-cyrus `{kind}` (shipped sample config)",
    "borg-cyrus-nocheck": "same + `unsafe_skip_path_validation_before_create: true`",
    "borgmatic-btrfs": "borgmatic's own `btrfs: {{}}` hook (no Cyrus dumps)",
    "borgmatic-lvm": "borgmatic's own `lvm:` hook (no Cyrus dumps; random mount path)",
}
ANCHOR = "plain"
FIRST_ROWS = ("plain", "borg-cyrus", "borgmatic-btrfs", "borgmatic-lvm")
LVM_SNAPSHOT_SIZE = "50%ORIGIN"


class Runner:
    def __init__(self, bed, kind="btrfs"):
        self.bed = bed
        repo_live = bed.repo("live", fresh=True)
        repo_snap = bed.repo(kind, fresh=True)
        repo_bm = bed.repo(f"bm-{kind}", fresh=True)
        self.work = bed.work(kind)
        if kind == "lvm":
            self.bc = bed.borg_cyrus_config(kind, self.work, "lvm", lvm={"snapshot_size": LVM_SNAPSHOT_SIZE})
            # XFS snapshots need nouuid (same UUID as the origin); borgmatic appends `-o ro DEVICE PATH`
            alt = {"lvm": {"mount_command": "mount -o nouuid"}}
        else:
            self.bc = bed.borg_cyrus_config(kind, self.work, "btrfs")
            alt = {"btrfs": {}}
        self.repos = {
            "plain": repo_live,
            "borgmatic": repo_live,
            "borg-cyrus": repo_snap,
            "borg-cyrus-nocheck": repo_snap,
            f"borgmatic-{kind}": repo_bm,
        }
        self.cfgs = {
            "borgmatic": bed.borgmatic_plain("nohooks", repo_live),
            "borg-cyrus": bed.borgmatic_bc(f"bc-{kind}", repo_snap, self.work),
            "borg-cyrus-nocheck": bed.borgmatic_bc(
                f"bc-{kind}-nocheck", repo_snap, self.work, unsafe_skip_path_validation_before_create=True
            ),
            f"borgmatic-{kind}": bed.borgmatic_plain(f"bm-{kind}", repo_bm, **alt),
        }

    def run(self, row, list_changed=False):
        if row == "plain":
            argv = (
                ["borg", "create"]
                + (["--list", "--filter=AM"] if list_changed else [])
                + [f"{self.repos['plain']}::plain-{time.time_ns()}", *self.bed.roots]
            )
            r = timed(argv, env_=env())
            r.hooks = {}
        else:
            cfg = self.cfgs[row]
            if list_changed:
                import yaml
                from bench.common import write_yaml

                with open(cfg) as f:
                    data = yaml.safe_load(f)
                data["extra_borg_options"] = {"create": "--list --filter=AM"}
                cfg = write_yaml(cfg.replace(".yaml", "-list.yaml"), data)
            r = self.bed.borgmatic(cfg, bc_config=self.bc if row.startswith("borg-cyrus") else None)
        if list_changed:
            lines = [ln for ln in (r.stdout + r.stderr).splitlines() if re.match(r"^(?:\S+: )?[AM] \S", ln)]
            r.changed = len(lines)
            r.changed_sample = lines[:3]
        return r


def parts(rn, reps):
    """What an unchanged borgmatic run is made of, timed alone: Python start of
    borgmatic and of borg-cyrus, `borg --version` (borgmatic runs it), and the
    `borg create --dry-run --list` walk borgmatic does before every create
    (path validation), here over the live directories."""
    e = env()
    cmds = {
        "borgmatic_start": ["borgmatic", "--version"],
        "borg_cyrus_start": ["borg-cyrus", "--version"],
        "borg_version": ["borg", "--version"],
        "dry_run_walk": ["borg", "create", "--dry-run", "--list", f"{rn.repos['plain']}::dry", *rn.bed.roots],
    }
    out = {}
    for name, argv in cmds.items():
        out[name] = median([timed(argv, env_=e).seconds for _ in range(max(2, reps))])
    return out


BTRFS_ROWS = ("plain", "borgmatic", "borg-cyrus", "borg-cyrus-nocheck", "borgmatic-btrfs")
LVM_ROWS = ("plain", "borg-cyrus", "borgmatic-lvm")


def run(bench, scale, reps, kind="btrfs", rows=None, list_in_runs=False, with_parts=True):
    """list_in_runs: every unchanged run lists what it reads (`--list --filter=AM`) instead of one
    extra listing run per method afterwards — for the VM, where each run costs half a minute."""
    rows = rows or (LVM_ROWS if kind == "lvm" else BTRFS_ROWS)
    bed = bench.testbed(scale, kind)
    rn = Runner(bed, kind)
    res = {
        "scale": scale.name,
        "scale_desc": scale.describe(),
        "kind": kind,
        "files": None,
        "rows": {},
        "reps": reps,
        "row_desc": {r: ROWS[r].format(kind=kind) for r in rows},
    }
    first_rows = [r for r in rows if r in FIRST_ROWS]
    log(f"  nightly/{scale.name}: first runs ({', '.join(first_rows)})")
    res["first_cold"] = True
    for row in first_rows:
        drop_caches()  # every first run starts cold: the copy just put the live files in the page cache
        r = rn.run(row)
        res["rows"].setdefault(row, {})["first_s"] = r.seconds
        log(f"    first {row:20} {r.seconds:7.2f} s")
    times = {row: [] for row in rows}
    hooks = {row: [] for row in rows}
    for k in range(reps):
        order = list(rows[k % len(rows) :]) + list(rows[: k % len(rows)])  # rotate: drift hits every row alike
        for row in order:
            r = rn.run(row, list_changed=list_in_runs)
            times[row].append(r.seconds)
            hooks[row].append(r.hooks)
            if list_in_runs:
                res["rows"].setdefault(row, {}).setdefault("changed_runs", []).append(r.changed)
                res["rows"][row]["changed_sample"] = r.changed_sample
        log(f"    unchanged #{k + 1}: " + ", ".join(f"{row} {times[row][-1]:.2f}" for row in rows))
    # how many files were read again: one more run of each with --list --filter=AM
    for row in rows:
        if list_in_runs:
            res["rows"][row]["changed_files"] = median(res["rows"][row]["changed_runs"])
            continue
        r = rn.run(row, list_changed=True)
        res["rows"].setdefault(row, {})["changed_files"] = r.changed
        res["rows"][row]["changed_sample"] = r.changed_sample
    if with_parts:
        res["parts"] = parts(rn, reps)
    anchor = median(times[ANCHOR]) if ANCHOR in rows else None
    for row in rows:
        d = res["rows"].setdefault(row, {})
        d["second_s"] = times[row]
        d["second_median"] = median(times[row])
        d["ratio"] = ratio(d["second_median"], anchor)
        d["before_s"] = median([h.get("before_s") for h in hooks[row]])
        d["after_s"] = median([h.get("after_s") for h in hooks[row]])
    fa = res["rows"].get(ANCHOR, {}).get("first_s")
    for row in rows:
        d = res["rows"][row]
        if d.get("first_s") is not None:
            d["first_ratio"] = ratio(d["first_s"], fa)
    from bench.testbed import manifest

    m = manifest(rn.work)
    res["files"] = m.get("counts", {})
    res["spool_bytes"] = bed.info.get("bytes")
    res["spool_messages"] = bed.info.get("messages")
    res["spool_mailboxes"] = bed.info.get("mailboxes")
    return res
