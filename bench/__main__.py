"""borg-cyrus benchmarks: `python -m bench [--quick]` (or `bench/run`).

Runs every measurement side by side on this machine and writes
docs/benchmarks.md (+ PNG plots in docs/) from the results; `--quick` runs
the small scales only (a few minutes, what CI runs) and prints the tables
without touching docs/ unless --doc is given. Nothing is asserted: targets
are reported as met or missed.
"""

import argparse
import os
import sys
import time
import traceback

from bench.scales import LARGE, MEDIUM, SMALL, VM_BIG, VM_SMALL, sweep
from bench.common import CLEANUP, ROOT, RUN_DIR, SHORT_DIR, log, machine, write_json

SECTIONS = ("nightly", "blocked", "scaling", "userdbs", "hourly", "restore", "lvm")


def plan_for(quick):
    if quick:
        return {
            "nightly": [(SMALL, 3)],
            "blocked": (SMALL, 2),
            "restore": (SMALL, 3, None),
            "scaling": ([sweep(1000), sweep(10_000), sweep(10_000, 10)], 3),
            "userdbs": 2,
            "hourly": 2,
            "lvm": ([VM_SMALL], 2),
        }
    return {
        "nightly": [(SMALL, 5), (MEDIUM, 3), (LARGE, 2)],
        "blocked": (MEDIUM, 3),
        "restore": (MEDIUM, 3, LARGE),
        "scaling": ([sweep(1000), sweep(10_000), sweep(100_000), sweep(10_000, 10)], 3),
        "userdbs": 3,
        "hourly": 3,
        "lvm": ([VM_SMALL, VM_BIG], 2),
    }


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="small scales only (a few minutes; what CI runs)")
    ap.add_argument("--only", action="append", choices=SECTIONS, help="run only this section (repeatable)")
    ap.add_argument(
        "--vm",
        action="store_true",
        help="with --quick: also run the LVM section in the VM (QEMU TCG; adds about 8 minutes)",
    )
    ap.add_argument(
        "--doc",
        help="write the report here (default: docs/benchmarks.md for a full run, "
        f"{RUN_DIR}/benchmarks-quick.md for --quick)",
    )
    ap.add_argument("--report-only", metavar="RESULTS_JSON", help="only regenerate the report from saved results")
    ap.add_argument(
        "--merge",
        action="store_true",
        help="keep the other sections of the last run's results (re-run some sections with --only)",
    )
    ap.add_argument("--no-cache", action="store_true", help="regenerate spools even if cached in " + RUN_DIR)
    ap.add_argument(
        "--profile",
        action="store_true",
        default=None,
        help="profile `borg-cyrus before` (pyinstrument) at the largest mailbox count (default: on for full runs)",
    )
    a = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("bench: run as root (loop devices, btrfs, Cyrus, fsfreeze)", file=sys.stderr)
        return 2
    from bench import report

    quick = a.quick
    if a.report_only:
        import json

        with open(a.report_only) as f:
            results = json.load(f)
        doc = a.doc or (
            os.path.join(ROOT, "docs", "benchmarks.md")
            if not results.get("quick")
            else os.path.join(RUN_DIR, "benchmarks-quick.md")
        )
        report.write(results, doc)
        log(f"wrote {doc}")
        return 0

    sections = a.only or [x for x in SECTIONS if x != "lvm" or not quick or a.vm]
    plan = plan_for(quick)
    os.makedirs(RUN_DIR, exist_ok=True)
    os.makedirs(SHORT_DIR, exist_ok=True)
    os.chmod(SHORT_DIR, 0o755)
    from bench.fs import final_sweep
    import shutil

    CLEANUP.push(shutil.rmtree, os.path.join(RUN_DIR, "borg-base"), True, what="Borg caches")
    CLEANUP.push(final_sweep, SHORT_DIR, RUN_DIR + "/beds", RUN_DIR + "/images", what="final sweep")
    CLEANUP.install_signals()
    from bench.testbed import Bench

    b = Bench(quick=quick, reps=None, use_cache=not a.no_cache, sections=sections)
    results = {
        "quick": quick,
        "started": time.strftime("%Y-%m-%d %H:%M:%S %z"),
        "machine": machine(),
        "sections": {},
        "errors": {},
    }
    t_all = time.monotonic()
    results_file = os.path.join(RUN_DIR, f"results-{'quick' if quick else 'full'}.json")
    previous_total = 0.0
    if a.merge and os.path.exists(results_file):
        import json

        with open(results_file) as f:
            old = json.load(f)
        for name in sections:
            old.get("sections", {}).pop(name, None)
            old.get("errors", {}).pop(name, None)
        old.setdefault("merged", []).append({"sections": sections, "at": results["started"]})
        results = dict(old, machine=results["machine"])
        previous_total = sum(v for k, v in (old.get("section_seconds") or {}).items() if k not in sections)
    try:
        for name in SECTIONS:
            if name not in sections:
                continue
            t = time.monotonic()
            log(f"== {name}")
            try:
                results["sections"][name] = run_section(name, b, plan, quick, a)
            except KeyboardInterrupt:
                raise
            except Exception as e:  # report, go on with the next section
                traceback.print_exc()
                results["errors"][name] = f"{type(e).__name__}: {e}"[:2000]
            results.setdefault("section_seconds", {})[name] = time.monotonic() - t
            log(f"   ({name}: {time.monotonic() - t:.0f} s)")
            write_json(results_file, results)
    finally:
        log("== cleanup")
        CLEANUP.run_all()
    results["total_seconds"] = time.monotonic() - t_all + previous_total
    write_json(results_file, results)
    print()
    print(report.tables(results))
    doc = a.doc or (
        os.path.join(RUN_DIR, "benchmarks-quick.md") if quick else os.path.join(ROOT, "docs", "benchmarks.md")
    )
    report.write(results, doc)
    if not quick and not a.doc:
        write_json(os.path.join(ROOT, "bench", "results", "full.json"), results)
    log(f"\nwrote {doc} (results: {results_file}); total {results['total_seconds'] / 60:.1f} min")
    return 1 if results["errors"] else 0


def run_section(name, b, plan, quick, a):
    if name == "nightly":
        from bench import nightly

        out = []
        for scale, reps in plan["nightly"]:
            out.append(nightly.run(b, scale, reps, list_in_runs=True))
            if scale not in (plan["blocked"][0], plan["restore"][0], plan["restore"][2]):
                b.drop_testbed(scale)
        return out
    if name == "blocked":
        from bench import blocked

        scale, reps = plan["blocked"]
        return blocked.run(b, scale, reps)
    if name == "scaling":
        from bench import scaling

        scales, reps = plan["scaling"]
        profile = a.profile if a.profile is not None else not quick
        return scaling.run(b, scales, reps, profile_largest=profile)
    if name == "userdbs":
        from bench import userdbs

        return userdbs.run(b, plan["userdbs"])
    if name == "hourly":
        from bench import hourly

        return hourly.run(b, plan["hourly"])
    if name == "restore":
        from bench import restore

        scale, reps, bigger = plan["restore"]
        out = restore.run(b, scale, reps)
        if bigger is not None:  # where borg's item stream is long: restore user/mailbox and the narrowing only
            b.drop_testbed(scale)
            out["large"] = restore.run(b, bigger, max(2, reps - 1), find=False)
            b.drop_testbed(bigger)
        return out
    if name == "lvm":
        from bench import lvm

        scales, reps = plan["lvm"]
        return lvm.run(b, scales, reps)
    raise ValueError(name)


if __name__ == "__main__":
    sys.exit(main())
