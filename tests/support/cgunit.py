"""A systemd-like unit made of a real control group (no systemd needed).

`Unit.start(argv)` runs a command inside a fresh cgroup of the unit-tracking
hierarchy (cgroup v1 name=systemd, or v2). `stop()` does what systemd does
for KillMode=control-group: signal every process of the group at once, wait,
then SIGKILL whatever is left. The processes and the signals are real; only
the "unit" bookkeeping is this file instead of PID 1.
"""

import os
import signal
import subprocess
import time

from borg_cyrus.safety import cgroups


def hierarchy():
    mps = cgroups._mountpoints()
    for name in ("name=systemd", "unified"):
        if name in mps:
            return name, mps[name]
    return None, None


class Unit:
    def __init__(self, name):
        self.kind, root = hierarchy()
        if root is None:
            raise RuntimeError("no cgroup hierarchy to make a unit in")
        self.path = os.path.join(root, name)
        os.makedirs(self.path, exist_ok=True)
        self.cgroup = "/" + name

    def start(self, argv, **kw):
        procs = os.path.join(self.path, "cgroup.procs")

        def enter():
            with open(procs, "w") as f:
                f.write("0\n")

        return subprocess.Popen(argv, preexec_fn=enter, **kw)

    def pids(self):
        try:
            with open(os.path.join(self.path, "cgroup.procs")) as f:
                return [int(x) for x in f.read().split()]
        except FileNotFoundError:
            return []

    def contains(self, pid):
        return cgroups.membership(pid).get(self.kind) == self.cgroup

    def signal_all(self, sig):
        pids = self.pids()
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        return pids

    def stop(self, sig=signal.SIGTERM, timeout=3.0):
        """systemctl stop: sig to every process, then SIGKILL after timeout."""
        hit = self.signal_all(sig)
        deadline = time.monotonic() + timeout
        while self.pids() and time.monotonic() < deadline:
            time.sleep(0.05)
        killed = self.signal_all(signal.SIGKILL)
        deadline = time.monotonic() + 5
        while self.pids() and time.monotonic() < deadline:
            time.sleep(0.05)
        return hit, killed

    def remove(self):
        self.signal_all(signal.SIGKILL)
        for _ in range(100):
            try:
                os.rmdir(self.path)
                return
            except FileNotFoundError:
                return
            except OSError:
                time.sleep(0.05)
