"""Fault injection for the reliability tests.

BORG_CYRUS_FAULT=<point>:<SIGNAL> makes this process send itself SIGNAL when
it reaches <point> (e.g. `snapshotted:SIGKILL`); <point>:PAUSE makes it wait
there (up to 120 s, touching $BORG_CYRUS_FAULT_MARK first) so a test can
signal a whole control group at that moment. It exists because "killed
exactly between two steps" cannot be produced reliably from outside; nothing
sets it outside the tests.
"""

import os
import signal
import time

POINTS = ("locked", "dumped", "quiesced", "snapshotted", "mounted", "patterns-written", "teardown")


def point(name):
    spec = os.environ.get("BORG_CYRUS_FAULT")
    if not spec:
        return
    where, _, sig = spec.partition(":")
    if where != name:
        return
    if sig == "PAUSE":
        mark = os.environ.get("BORG_CYRUS_FAULT_MARK")
        if mark:
            with open(mark, "w") as f:
                f.write(f"{os.getpid()}\n")
        time.sleep(120)
        return
    os.kill(os.getpid(), getattr(signal, sig or "SIGKILL"))
