"""Shared helpers: running and timing commands, environments, statistics,
cleanup that runs even when a benchmark fails or is interrupted."""

import json
import os
import platform
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import time

import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests"))
from support import common as support_common  # noqa: E402  (one environment for tests and benchmarks)

VENV_BIN = support_common.VENV_BIN
RUN_DIR = "/var/tmp/bench-run"  # repositories, loop images, borg caches (kept off /tmp's neighbours)
SHORT_DIR = "/tmp/bench"  # Cyrus bases (unix socket paths must stay short)


def log(msg=""):
    print(msg, flush=True)


def env(extra=None):
    """The tests' environment (tests/support/common.py), with borg's caches and
    borgmatic's state in the run directory."""
    e = support_common.env()
    e["BORG_PASSPHRASE"] = ""
    e["BORG_BASE_DIR"] = os.path.join(RUN_DIR, "borg-base")
    e["XDG_STATE_HOME"] = os.path.join(RUN_DIR, "state")
    e.pop("XDG_RUNTIME_DIR", None)
    e.update(extra or {})
    return e


def sh(*argv, check=True, **kw):
    kw.setdefault("capture_output", True)
    kw.setdefault("text", True)
    r = subprocess.run([str(a) for a in argv], **kw)
    if check and r.returncode:
        raise RuntimeError(
            f"{' '.join(map(str, argv))} failed ({r.returncode}):\n{(r.stdout or '')[-3000:]}\n"
            f"{(r.stderr or '')[-3000:]}"
        )
    return r


class Timed:
    """seconds, maxrss_kb, returncode, stdout, stderr, t0, t1 (+ whatever callers add)."""


def timed(argv, env_=None, check=True, cwd=None):
    """Run argv: wall time (time.monotonic, comparable across processes on
    Linux) and the peak RSS of the child's process tree (wait4: the max over
    the child and the children it waited for)."""
    out = Timed()
    t0 = time.monotonic()
    p = subprocess.Popen(
        [str(a) for a in argv],
        env=env_,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        cwd=cwd,
    )
    # read both pipes without deadlock, then reap with wait4 to get the rusage
    import threading

    bufs = {}

    def reader(name, f):
        bufs[name] = f.read()

    ts = [threading.Thread(target=reader, args=(n, f)) for n, f in (("out", p.stdout), ("err", p.stderr))]
    for t in ts:
        t.start()
    _pid, status, ru = os.wait4(p.pid, 0)
    t1 = time.monotonic()
    for t in ts:
        t.join()
    p.returncode = os.waitstatus_to_exitcode(status)
    out.seconds, out.t0, out.t1 = t1 - t0, t0, t1
    out.returncode = p.returncode
    out.stdout = bufs.get("out", b"").decode(errors="replace")
    out.stderr = bufs.get("err", b"").decode(errors="replace")
    out.maxrss_kb = ru.ru_maxrss
    if check and p.returncode:
        raise RuntimeError(
            f"{' '.join(map(str, argv))} failed ({p.returncode}):\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
        )
    return out


def median(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def spread(xs):
    xs = [x for x in xs if x is not None]
    return (min(xs), max(xs)) if xs else (None, None)


def ratio(a, b):
    if a is None or b in (None, 0):
        return None
    return a / b


def write_yaml(path, data):
    with open(path, "w") as f:
        yaml.safe_dump(data, f, sort_keys=False, allow_unicode=True)
    os.chmod(path, 0o600)
    return path


def write_json(path, data):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(data, f, indent=1, default=str)
    os.replace(tmp, path)


def drop_caches():
    """Not used for the headline numbers (a nightly backup runs with a warm
    dentry cache as often as not); kept for ad-hoc cold-cache runs."""
    subprocess.run(["sync"])
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3\n")


class Cleanup:
    """LIFO cleanup actions that run on normal exit, on exceptions and on
    SIGTERM/SIGINT/SIGHUP (loop devices, mounts, frozen filesystems, Cyrus)."""

    def __init__(self):
        self.actions = []
        self._installed = False

    def push(self, fn, *args, what=None):
        self.actions.append((fn, args, what or getattr(fn, "__name__", "cleanup")))
        return len(self.actions) - 1

    def run_one(self, idx):
        fn, args, what = self.actions[idx]
        self.actions[idx] = (lambda: None, (), "done")
        try:
            fn(*args)
        except Exception as e:  # keep going
            log(f"  cleanup {what}: {e}")

    def run_all(self):
        while self.actions:
            fn, args, what = self.actions.pop()
            try:
                fn(*args)
            except Exception as e:
                log(f"  cleanup {what}: {e}")

    def install_signals(self):
        if self._installed:
            return
        self._installed = True

        def handler(signum, frame):
            raise KeyboardInterrupt(f"signal {signum}")

        for s in (signal.SIGTERM, signal.SIGHUP):
            signal.signal(s, handler)


CLEANUP = Cleanup()


def versions():
    def first_line(argv):
        try:
            r = subprocess.run(argv, capture_output=True, text=True, env=env(), timeout=60)
            return (r.stdout or r.stderr).strip().splitlines()[0]
        except Exception as e:
            return f"? ({e})"

    cyrus = "?"
    try:
        r = subprocess.run(["dpkg-query", "-W", "-f=${Version}", "cyrus-imapd"], capture_output=True, text=True)
        cyrus = r.stdout.strip() or "?"
    except OSError:
        pass
    return {
        "borg": first_line([os.path.join(VENV_BIN, "borg"), "--version"]),
        "borgmatic": first_line([os.path.join(VENV_BIN, "borgmatic"), "--version"]),
        "cyrus-imapd": cyrus,
        "python": platform.python_version(),
    }


def machine():
    cpu = "?"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem = 0
    try:
        with open("/proc/meminfo") as f:
            mem = int(f.readline().split()[1]) // 1024
    except (OSError, ValueError):
        pass
    root_fs = sh("findmnt", "-no", "FSTYPE", "-T", "/var/tmp", check=False).stdout.strip()
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_mb": mem,
        "kernel": platform.release(),
        "os": _os_release(),
        "disk_fs": root_fs,
        "virtualized": _virt(),
        **versions(),
    }


def _os_release():
    try:
        with open("/etc/os-release") as f:
            d = dict(line.strip().split("=", 1) for line in f if "=" in line)
        return d.get("PRETTY_NAME", "?").strip('"')
    except OSError:
        return "?"


def _virt():
    out = []
    r = sh("systemd-detect-virt", check=False) if shutil.which("systemd-detect-virt") else None
    if r is not None and r.stdout.strip() and r.stdout.strip() != "none":
        out.append(r.stdout.strip())
    try:
        with open("/proc/cpuinfo") as f:
            if " hypervisor" in f.read():
                out.append("VM (hypervisor flag)")
    except OSError:
        pass
    return ", ".join(out) or "no"


def rss_self_kb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
