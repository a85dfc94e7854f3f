"""An outside writer that timestamps its writes: how long was Cyrus
write-blocked, seen from a client?

    python -m bench.writer --lmtp SOCKET --rcpt USER --append FILE --out OUT.json

Two threads, until SIGTERM/SIGINT:

- LMTP: delivers a 1 KB message to USER through Cyrus's lmtpd every
  --interval seconds (default 10 ms; back to back when a delivery takes
  longer, which is the case on this VM's disk: each delivery fsyncs), over one
  connection, reconnecting after any error (Cyrus stopped: connection refused).
- append: appends a line to FILE (on the filesystem under test) every
  --append-interval seconds (default 2 ms), no fsync: blocks only while the
  filesystem is frozen.

Times are time.monotonic() (CLOCK_MONOTONIC, the same clock in every process),
written as JSON to OUT at exit: the completion time of every successful write
and the time of every failed LMTP attempt.
"""

import argparse
import json
import os
import signal
import smtplib
import threading
import time

STOP = threading.Event()


def lmtp_loop(sock_path, rcpt, interval, rec):
    conn = None
    seq = 0
    while not STOP.is_set():
        t0 = time.monotonic()
        try:
            if conn is None:
                conn = smtplib.LMTP(sock_path, timeout=300)
            seq += 1
            msg = (
                f"From: writer@example.org\r\nTo: {rcpt}@example.com\r\nSubject: probe {seq}\r\n"
                f"Message-ID: <probe.{os.getpid()}.{seq}@bench>\r\n\r\n" + "probe line\r\n" * 80
            ).encode()
            conn.sendmail("writer@example.org", [rcpt], msg)
            rec["ok"].append(time.monotonic())
        except Exception as e:  # noqa: BLE001 — any failure is a failed attempt
            rec["fail"].append(time.monotonic())
            rec["errors"][type(e).__name__] = rec["errors"].get(type(e).__name__, 0) + 1
            try:
                if conn is not None:
                    conn.close()
            except Exception:
                pass
            conn = None
        left = interval - (time.monotonic() - t0)
        if left > 0:
            STOP.wait(left)
    if conn is not None:
        try:
            conn.quit()
        except Exception:
            pass


def append_loop(path, interval, rec):
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        n = 0
        while not STOP.is_set():
            n += 1
            os.write(fd, b"%d %.6f\n" % (n, time.monotonic()))
            rec["ok"].append(time.monotonic())
            time.sleep(interval)
    finally:
        os.close(fd)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--lmtp")
    ap.add_argument("--rcpt", default="writer")
    ap.add_argument("--interval", type=float, default=0.010)
    ap.add_argument("--append")
    ap.add_argument("--append-interval", type=float, default=0.002)
    ap.add_argument("--out", required=True)
    a = ap.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: STOP.set())
    signal.signal(signal.SIGINT, lambda *_: STOP.set())
    recs = {"lmtp": {"ok": [], "fail": [], "errors": {}}, "append": {"ok": []}, "started": time.monotonic()}
    threads = []
    if a.lmtp:
        threads.append(threading.Thread(target=lmtp_loop, args=(a.lmtp, a.rcpt, a.interval, recs["lmtp"]), daemon=True))
    if a.append:
        threads.append(
            threading.Thread(target=append_loop, args=(a.append, a.append_interval, recs["append"]), daemon=True)
        )
    for t in threads:
        t.start()
    print("ready", flush=True)
    while not STOP.is_set():
        STOP.wait(0.5)
    for t in threads:
        t.join(60)
    recs["stopped"] = time.monotonic()
    with open(a.out + ".tmp", "w") as f:
        json.dump(recs, f)
    os.replace(a.out + ".tmp", a.out)


class Writer:
    """Host-side handle: one writer process per kind (no GIL coupling between
    them), at nice -10 so that the backup competing for the two CPUs shows as
    little as possible in the gaps; stop() merges their records."""

    def __init__(self, out, lmtp=None, rcpt="writer", append=None, interval=0.010, append_interval=0.002):
        import subprocess
        import sys

        self.out = out
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        env = dict(os.environ, PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""))
        base = ["nice", "-n", "-10", sys.executable, "-m", "bench.writer"]
        jobs = []
        if lmtp:
            jobs.append(("lmtp", ["--lmtp", lmtp, "--rcpt", rcpt, "--interval", str(interval)]))
        if append:
            jobs.append(("append", ["--append", append, "--append-interval", str(append_interval)]))
        self.procs = []
        for kind, args in jobs:
            path = f"{out}.{kind}"
            p = subprocess.Popen(
                base + args + ["--out", path], stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, env=env, text=True
            )
            self.procs.append((kind, path, p))
        for kind, _path, p in self.procs:
            if p.stdout.readline().strip() != "ready":
                self.stop()
                raise RuntimeError(f"the {kind} writer did not start")
        self.data = None

    def stop(self):
        data = {"lmtp": {"ok": [], "fail": [], "errors": {}}, "append": {"ok": []}}
        for kind, path, p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
            try:
                p.wait(90)
            except Exception:
                p.kill()
                p.wait()
            try:
                with open(path) as f:
                    data[kind] = json.load(f)[kind]
            except (OSError, ValueError, KeyError):
                pass
        self.data = data
        with open(self.out, "w") as f:
            json.dump(data, f)
        return data


def max_gap(times, t0, t1):
    """Longest interval between consecutive successful writes that overlaps
    [t0, t1] (the backup); (gap seconds, start of the gap)."""
    ts = sorted(times)
    best = (0.0, None)
    for a, b in zip(ts, ts[1:]):
        if b < t0 or a > t1:
            continue
        if b - a > best[0]:
            best = (b - a, a)
    # no success at all after the start: the gap is still open
    after = [t for t in ts if t >= t0]
    if not after:
        before = [t for t in ts if t < t0]
        best = (t1 - (before[-1] if before else t0), before[-1] if before else t0)
    return best


def count_in(times, t0, t1):
    return sum(1 for t in times if t0 <= t <= t1)


if __name__ == "__main__":
    main()
