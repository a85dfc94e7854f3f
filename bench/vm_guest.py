"""Inside the VM harness (tests/vm/run-in-vm.sh): LVM measurements.

    python -m bench.vm_guest --out FILE --reps N SCALE...

For each spool: an XFS logical volume holding a Cyrus, then (bench/nightly.py)
first and unchanged runs of plain `borg create`, borgmatic + borg-cyrus `lvm`
and borgmatic's own `lvm:` hook, and (bench/blocked.py) the write-blocked
window of mode `lvm` against `live`. Results are JSON in FILE.
"""

import argparse
import os
import sys
import time
import traceback

from bench import blocked, nightly
from bench.common import CLEANUP, SHORT_DIR, machine, write_json
from bench.scales import by_name
from bench.testbed import Bench


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--blocked-reps", type=int, default=2)
    ap.add_argument("scales", nargs="+")
    a = ap.parse_args(argv)
    if os.environ.get("VMH_GUEST") != "1":
        print("bench.vm_guest runs inside the VM harness only", file=sys.stderr)
        return 2
    os.makedirs(SHORT_DIR, exist_ok=True)
    os.chmod(SHORT_DIR, 0o755)
    CLEANUP.install_signals()
    out = {"machine": machine(), "spools": {}, "errors": {}}
    b = Bench(quick=False, reps=a.reps)
    try:
        for name in a.scales:
            scale = by_name(name)
            t = time.monotonic()
            try:
                res = {"nightly": nightly.run(b, scale, a.reps, kind="lvm", list_in_runs=True, with_parts=False)}
                if name == a.scales[0]:
                    res["blocked"] = blocked.run(b, scale, a.blocked_reps, table=blocked.VM_MODES, kind="lvm")
                res["seconds"] = time.monotonic() - t
                out["spools"][name] = res
            except Exception as e:
                traceback.print_exc()
                out["errors"][name] = f"{type(e).__name__}: {e}"[:2000]
            b.drop_testbed(scale, "lvm")
            write_json(a.out, out)
    finally:
        CLEANUP.run_all()
    write_json(a.out, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
