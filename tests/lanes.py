"""The whole test suite in lanes, as `./dev test` runs it (docs/testing.md).

    tests/lanes.py                 every lane (what CI runs)
    tests/lanes.py --quick         the unit tier and the fast integration tests
    tests/lanes.py --lane NAME     one lane (repeatable); --list names them

A lane is one pytest run: the unit tier; the integration tests on this host,
spread over xdist workers (they wait on Cyrus, borg and the disk more than
on the CPU); the tests in clean Debian 12 and 13 roots; the tests inside the
QEMU VM (one boot per kind of guest). A lane starts as soon as the lanes it
comes after have ended; the others start at once. Each lane's output goes to its log (printed whole when
the lane ends); its progress lines (files done, time so far) are shown as
they come, prefixed with the lane's name. At the end: a table of wall time
per lane and of cost per test file, also kept as JSON in the log directory.
Exit status: 0 when every lane passed, else 1.
"""

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
LOGS = os.path.join(ROOT, ".test-logs")
# kept across runs (the logs are not): what the last run of each selection took here
LAST = os.path.join(os.environ.get("BORG_CYRUS_CLEANROOM_CACHE", "/var/cache/borg-cyrus-tests"), "last-runs.json")
# measured on a 2-core machine (docs/testing.md): minutes, cold (a fresh machine) and warm
EXPECTED = {"all": (40, 30), "quick": (5, 4)}

# the integration files that run in clean Debian roots (they build, cache and unpack roots)
ROOT_FILES = [
    "tests/integration/test_readme_install.py",
    "tests/integration/test_cyrus310.py",
    "tests/integration/test_apt_hook.py",
    "tests/integration/test_systemd_boot.py",
]


def workers():
    """xdist workers for the host's integration lane: they mostly wait, so more than the cores."""
    return int(os.environ.get("BORG_CYRUS_TEST_WORKERS") or max(2, 2 * (os.cpu_count() or 1)))


class Lane:
    def __init__(self, name, args, about, after=(), xdist=0):
        self.name, self.args, self.about, self.after, self.xdist = name, args, about, tuple(after), xdist
        self.rc = None
        self.start = None  # seconds after the run began
        self.wall = None
        self.ended = threading.Event()
        self.cpu = None  # the machine's busy share of its cores while the lane ran

    def argv(self, extra, seed):
        argv = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "--durations=15"]
        argv += [f"--randomly-seed={seed}", *self.args]
        if self.xdist:
            argv += ["-n", str(self.xdist), "--dist", "loadfile"]
        return argv + list(extra)


def lanes(quick=False):
    present = [f for f in ROOT_FILES if os.path.exists(os.path.join(ROOT, f))]
    ignore = [f"--ignore={f}" for f in present]
    if quick:
        return [
            Lane("unit", ["tests/unit"], "no root, no Cyrus: seconds"),
            Lane(
                "fast",
                ["tests/integration", *ignore, "-m", "not slow and not vm"],
                "integration tests that are not marked slow, real Cyrus, on this host",
                xdist=workers(),
            ),
        ]
    return [
        Lane("unit", ["tests/unit"], "no root, no Cyrus: seconds"),
        Lane(
            "integration",
            ["tests/integration", *ignore],
            "real Cyrus, borg, borgmatic, btrfs/XFS on loop devices, on this host",
            xdist=workers(),
        ),
        Lane("roots", present, "clean Debian 12 and 13 roots: the README's install, Cyrus 3.10, apt, systemd"),
        # after the CPU-bound lanes: under TCG the guests keep both cores busy, and slow what runs beside them
        Lane(
            "vm",
            ["tests/vm"],
            "LVM/XFS and ZFS inside the QEMU VM, one boot per kind of guest",
            after=("unit", "integration"),
        ),
    ]


def prepare(chosen, logdir, say):
    """Start what a later lane needs and can be built while earlier lanes run,
    at low priority: the VM harness's kernel and the OpenZFS modules (minutes
    of compiling on a fresh machine; cached afterwards). The lane that needs
    it waits on the harness's lock if it is not done yet."""
    started = []
    names = {ln.name for ln in chosen}
    if any(ln.name == "vm" and names & set(ln.after) for ln in chosen):
        log = open(os.path.join(logdir, "prepare-vm.log"), "w")
        argv = ["nice", "-n", "10", os.path.join(HERE, "vm", "run-in-vm.sh"), "--prepare", "--zfs", "--quiet"]
        started.append(subprocess.Popen(argv, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT))
        say("prepare: the VM kernel and OpenZFS modules, in the background (log prepare-vm.log)")
    return started


def run_lane(lane, extra, seed, logdir, say, others, t_run):
    for name in lane.after:
        if name in others:
            others[name].ended.wait()
    try:
        _run_lane(lane, extra, seed, logdir, say, t_run)
    finally:
        lane.ended.set()


def _run_lane(lane, extra, seed, logdir, say, t_run):
    log_path = os.path.join(logdir, f"{lane.name}.log")
    env = dict(os.environ, BORG_CYRUS_LANE=lane.name, BORG_CYRUS_TIMINGS=os.path.join(logdir, "files.jsonl"))
    t0, busy0 = time.monotonic(), cpu_jiffies()
    lane.start = t0 - t_run
    say(f"{lane.name}: started at {clock(lane.start)}")
    with open(log_path, "w") as log:
        p = subprocess.Popen(
            lane.argv(extra, seed), cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        for line in p.stdout:
            log.write(line)
            if "files, " in line and line.lstrip(".FEsxX").startswith("["):
                say(f"{lane.name}: {line.lstrip('.FEsxX').rstrip()}")
        lane.rc = p.wait()
    lane.wall = time.monotonic() - t0
    lane.cpu = cpu_share(busy0, cpu_jiffies())
    with open(log_path) as f:
        text = f.read()
    say(f"===== lane {lane.name}: exit {lane.rc} in {clock(lane.wall)} (log {log_path})\n{text.rstrip()}\n")


def cpu_jiffies():
    """(busy, total) jiffies of all cores since boot (/proc/stat)."""
    try:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return sum(fields) - idle, sum(fields)


def cpu_share(a, b):
    if not a or not b or b[1] == a[1]:
        return None
    return (b[0] - a[0]) / (b[1] - a[1])


def clock(seconds):
    m, s = divmod(int(seconds), 60)
    return f"{m}m{s:02d}s"


def summary(chosen, logdir, total, write=True):
    records = []
    path = os.path.join(logdir, "files.jsonl")
    if os.path.exists(path):
        with open(path) as f:
            records = [json.loads(line) for line in f if line.strip()]
    out = ["", "== wall time per lane"]
    out.append(
        f"{'lane':<12} {'start':>6} {'wall':>8} {'cpu':>5} {'tests':>6} {'passed':>6} {'failed':>6} {'skipped':>7}  exit"
    )
    for lane in chosen:
        mine = [r for r in records if r["lane"] == lane.name]
        counts = {k: sum(r["outcomes"].get(k, 0) for r in mine) for k in ("passed", "failed", "skipped", "error")}
        wall = clock(lane.wall) if lane.wall is not None else "-"
        start = clock(lane.start) if lane.start is not None else "-"
        cpu = f"{lane.cpu:.0%}" if lane.cpu is not None else "-"
        out.append(
            f"{lane.name:<12} {start:>6} {wall:>8} {cpu:>5} {sum(r['tests'] for r in mine):>6} {counts['passed']:>6} "
            f"{counts['failed'] + counts['error']:>6} {counts['skipped']:>7}  {lane.rc}"
        )
    out.append(f"{'all':<12} {'':>6} {clock(total):>8}")
    out.append(
        "(start: after the run began; cpu: how busy the machine's cores were while the lane ran, lanes beside it included)"
    )
    out += ["", "== cost per test file (setup + call + teardown, summed over workers)"]
    for r in sorted(records, key=lambda r: -r["seconds"]):
        out.append(f"{r['seconds']:8.1f} s  {r['tests']:4d} tests  {r['lane']:<12} {r['file']}")
    if not write:
        return "\n".join(out)
    with open(os.path.join(logdir, "summary.json"), "w") as f:
        lanes_json = [
            {"lane": ln.name, "start": ln.start, "wall": ln.wall, "cpu": ln.cpu, "exit": ln.rc} for ln in chosen
        ]
        json.dump({"total": total, "lanes": lanes_json, "files": records}, f, indent=1)
    return "\n".join(out)


def main(argv=None):
    ap = argparse.ArgumentParser(prog="./dev test", description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="the unit tier and the fast integration tests")
    ap.add_argument("--lane", action="append", default=[], help="run only this lane (repeatable)")
    ap.add_argument("--list", action="store_true", help="name the lanes and what each proves")
    ap.add_argument("--summary", action="store_true", help="print the last run's tables again")
    args, extra = ap.parse_known_args(argv)
    if args.summary:
        return print_summary_again()
    all_lanes = lanes(args.quick)
    if args.list:
        for lane in all_lanes:
            after = f" (after {', '.join(lane.after)})" if lane.after else ""
            print(f"{lane.name:<12} {lane.about}{after}")
        return 0
    chosen = [ln for ln in all_lanes if not args.lane or ln.name in args.lane]
    unknown = set(args.lane) - {ln.name for ln in all_lanes}
    if unknown:
        print(f"./dev test: no lane {', '.join(sorted(unknown))}; --list names them", file=sys.stderr)
        return 2
    selection = "quick" if args.quick else "all" if not args.lane else "+".join(sorted(args.lane))
    # one random order for every lane, printed so that a failure can be run again in the same order
    seed = int(os.environ.get("BORG_CYRUS_TEST_SEED") or random.randrange(1, 2**31))
    announce(selection, chosen, extra)
    print(f"random order: --randomly-seed={seed} (BORG_CYRUS_TEST_SEED={seed} ./dev test ... repeats it)", flush=True)
    shutil.rmtree(LOGS, ignore_errors=True)
    os.makedirs(LOGS, 0o700)
    lock = threading.Lock()

    def say(text):
        with lock:
            print(text, flush=True)

    background = prepare(chosen, LOGS, say)

    t0 = time.monotonic()
    by_name = {ln.name: ln for ln in chosen}
    threads = [
        threading.Thread(target=run_lane, args=(ln, extra, seed, LOGS, say, by_name, t0), name=ln.name) for ln in chosen
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for p in background:
        if p.poll() is None:
            p.terminate()
    total = time.monotonic() - t0
    print(summary(chosen, LOGS, total), flush=True)
    ok = all(ln.rc in (0, 5) for ln in chosen)
    remember(selection, total, ok)
    return 0 if ok else 1


def _last_runs():
    try:
        with open(LAST) as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}


def remember(selection, total, ok):
    runs = _last_runs()
    runs[selection] = {"seconds": round(total), "passed": ok, "when": time.strftime("%Y-%m-%d %H:%M")}
    try:
        os.makedirs(os.path.dirname(LAST), 0o700, exist_ok=True)
        with open(LAST + ".tmp", "w") as f:
            json.dump(runs, f)
        os.replace(LAST + ".tmp", LAST)
    except OSError:
        pass


def announce(selection, chosen, extra):
    """Say up front what runs and how long it should take."""
    names = ", ".join(f"{ln.name} ({ln.about})" for ln in chosen)
    print(f"./dev test: lanes {names}" + (f"; pytest arguments {' '.join(extra)}" if extra else ""))
    if selection in EXPECTED:
        cold, warm = EXPECTED[selection]
        line = f"expected: at most {cold} min on a fresh 2-core machine, {warm} min with its caches built"
    else:
        line = "expected: see the lane times in docs/testing.md"
    last = _last_runs().get(selection)
    if last:
        line += f"; the last such run here took {clock(last['seconds'])} ({last['when']}, {'passed' if last['passed'] else 'failed'})"
    print(line + f". Progress lines below; logs in {os.path.relpath(LOGS, ROOT)}/", flush=True)


def print_summary_again():
    path = os.path.join(LOGS, "summary.json")
    if not os.path.exists(path):
        print(f"./dev test: no {path}: run the tests first", file=sys.stderr)
        return 2
    with open(path) as f:
        data = json.load(f)
    chosen = []
    for rec in data["lanes"]:
        lane = Lane(rec["lane"], [], "")
        lane.start, lane.wall, lane.rc, lane.cpu = rec.get("start"), rec["wall"], rec["exit"], rec.get("cpu")
        chosen.append(lane)
    print(summary(chosen, LOGS, data["total"], write=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
