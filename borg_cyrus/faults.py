"""Fault injection for the reliability tests.

BORG_CYRUS_FAULT=<point>:<SIGNAL> makes this process send itself SIGNAL when
it reaches <point> (e.g. `snapshotted:SIGKILL`). It exists because "killed
exactly between two steps" cannot be produced reliably from outside; nothing
sets it outside the tests.
"""

import os
import signal

POINTS = ("locked", "dumped", "quiesced", "snapshotted", "mounted", "patterns-written", "teardown")


def point(name):
    spec = os.environ.get("BORG_CYRUS_FAULT")
    if not spec:
        return
    where, _, sig = spec.partition(":")
    if where == name:
        os.kill(os.getpid(), getattr(signal, sig or "SIGKILL"))
