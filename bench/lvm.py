"""LVM, inside the QEMU VM harness (tests/vm/vmharness.py): borg-cyrus
`lvm` against borgmatic's own `lvm:` hook and plain `borg create`, and the
write-blocked window of an LVM snapshot. The guest side is bench/vm_guest.py.

The VM is QEMU TCG (software emulation, ~25x slower than the host), so the
spools are small; the absolute times are the VM's, the ratios are what counts.
"""

import json
import os
import sys

from bench import fs
from bench.common import RUN_DIR, log

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def random_path_analog(bench, reps=2):
    """On the host, with real data sizes: borg-cyrus `btrfs` reading its snapshot at its stable mount
    path against the same snapshot mounted at a new random path every run — which is what borgmatic's
    `lvm:` and `zfs:` hooks do (`<runtime dir>/lvm_snapshots/...` under a fresh `tempfile` directory).
    Everything else (borgmatic, hooks, dumps, repository) is identical, so the ratio is the cost of
    Borg's files cache missing on every file."""
    import re
    import tempfile

    import yaml

    from bench.common import median, write_yaml

    beds = {name: bed for (name, kind), bed in bench._beds.items() if kind == "btrfs"}
    bed = beds.get("medium") or beds.get("small")
    if bed is None:
        return {"error": "no btrfs testbed left to measure on"}
    work = bed.work("btrfs")
    repo = bed.repo("btrfs")
    stable = bed.borg_cyrus_config("btrfs", work, "btrfs")
    cfg = bed.borgmatic_bc("bc-btrfs", repo, work)
    with open(cfg) as f:
        data = yaml.safe_load(f)
    data["extra_borg_options"] = {"create": "--list --filter=AM"}
    cfg = write_yaml(cfg.replace(".yaml", "-analog.yaml"), data)
    roots = os.path.join(RUN_DIR, "random-mounts")
    os.makedirs(roots, exist_ok=True)

    def changed(r):
        return len([ln for ln in (r.stdout + r.stderr).splitlines() if re.match(r"^(?:\S+: )?[AM] \S", ln)])

    bed.borgmatic(cfg, bc_config=stable)  # the stable path is warm
    out = {
        "scale": bed.scale.name,
        "spool_bytes": bed.info.get("bytes"),
        "spool_messages": bed.info.get("messages"),
        "stable_s": [],
        "random_s": [],
        "stable_changed": [],
        "random_changed": [],
    }
    for _ in range(reps):
        r = bed.borgmatic(cfg, bc_config=stable)
        out["stable_s"].append(r.seconds)
        out["stable_changed"].append(changed(r))
        mnt = tempfile.mkdtemp(prefix="borgmatic-", dir=roots)
        rnd = bed.borg_cyrus_config("btrfs-random", work, "btrfs", snapshot={"mount_directory": mnt})
        r = bed.borgmatic(cfg, bc_config=rnd)
        out["random_s"].append(r.seconds)
        out["random_changed"].append(changed(r))
        fs.safe_rmtree(mnt)
        log(
            f"    stable path {out['stable_s'][-1]:.1f} s ({out['stable_changed'][-1]} files read), random path "
            f"{out['random_s'][-1]:.1f} s ({out['random_changed'][-1]} files read)"
        )
    out["stable_median"], out["random_median"] = median(out["stable_s"]), median(out["random_s"])
    out["ratio"] = out["random_median"] / out["stable_median"] if out["stable_median"] else None
    return out


def run(bench, scales, reps, timeout=1800):
    analog = None
    try:
        log("  host analog: stable vs random snapshot mount path (btrfs)")
        analog = random_path_analog(bench)
    except Exception as e:  # never keep the VM part from running
        analog = {"error": f"{type(e).__name__}: {e}"[:1500]}
    res = _vm(bench, scales, reps, timeout)
    res["analog"] = analog
    return res


def _vm(bench, scales, reps, timeout):
    sys.path.insert(0, os.path.join(ROOT, "tests", "vm"))
    try:
        from vmharness import run_in_vm, vm_unavailable_reason
    except ImportError as e:
        return {"error": f"VM harness not importable: {e}"}
    reason = vm_unavailable_reason()
    if reason:
        return {"error": f"VM harness unavailable: {reason}"}
    for scale in scales:  # the guest copies the spools from the host's cache
        fs.ensure_cached(scale)
    share = os.path.join(RUN_DIR, "vm-share")
    os.makedirs(share, exist_ok=True)
    out = os.path.join(share, "lvm.json")
    if os.path.exists(out):
        os.unlink(out)
    log(f"  booting the VM (TCG) for {', '.join(s.name for s in scales)} ...")
    r = run_in_vm(
        [sys.executable, "-m", "bench.vm_guest", "--out", out, "--reps", str(reps), *[s.name for s in scales]],
        disks=1,
        disk_size="6G",
        timeout=timeout,
        share=share,
        cwd=ROOT,
        mem=3072,
    )
    for line in (r.stdout or "").splitlines():
        if line.startswith(("    ", "  testbed", "  nightly")):
            log("  vm:" + line)
    res = {}
    if os.path.exists(out):
        with open(out) as f:
            res = json.load(f)
    if r.returncode:
        res.setdefault("errors", {})["vm"] = (
            f"exit {r.returncode}: {(r.stderr or '')[-2000:]}{(r.stdout or '')[-2000:]}"
        )
    return res
