"""Progress of long steps on stderr: one line updated in place on a terminal
(at most 10 times a second), exactly one summary line otherwise (cron and
systemd logs), nothing with -q.

    with progress.Progress("dumps", len(users), "users") as p:
        for u in users:
            ...
            p.update()

or, around a loop: `for u in progress.each("dumps", users, "users"): ...`.
"""

import logging
import sys
import time

INTERVAL = 0.1  # seconds between redraws: at most 10 a second


def _quiet():
    """-q: the command line set borg-cyrus's log level above INFO."""
    return logging.getLogger("borg_cyrus").getEffectiveLevel() > logging.INFO


def _isatty(stream):
    try:
        return stream.isatty()
    except (AttributeError, ValueError, OSError):
        return False


class Progress:
    def __init__(self, label, total=None, unit="", stream=None, quiet=None):
        self.label, self.total, self.unit = label, total, unit
        self.stream = stream if stream is not None else sys.stderr
        self.quiet = _quiet() if quiet is None else quiet
        self.tty = _isatty(self.stream)
        self.done = 0
        self.t0 = time.monotonic()
        self._last = 0.0
        self._width = 0
        self._closed = False

    def line(self):
        count = f"{self.done}/{self.total}" if self.total is not None else str(self.done) if self.done else ""
        return f"borg-cyrus: {self.label}:" + "".join(f" {x}" for x in (count, self.unit) if x)

    def _write(self, text, end=""):
        pad = " " * max(0, self._width - len(text))  # blank what a longer line left
        self._width = 0 if end else len(text)
        try:
            self.stream.write(("\r" if self.tty else "") + text + (pad if self.tty else "") + end)
            self.stream.flush()
        except (OSError, ValueError):
            pass  # a closed stderr never fails the work

    def update(self, n=1):
        self.done += n
        if self.tty and not self.quiet:
            now = time.monotonic()
            if now - self._last >= INTERVAL:
                self._last = now
                self._write(self.line())

    def close(self, failed=False):
        if self._closed:
            return
        self._closed = True
        if not self.quiet:
            secs = time.monotonic() - self.t0
            self._write(f"{self.line()} in {secs:.1f} s{' (failed)' if failed else ''}", end="\n")

    def __enter__(self):
        if self.tty and not self.quiet:
            self._write(self.line())
        return self

    def __exit__(self, exc_type, exc, tb):
        self.close(failed=exc_type is not None)
        return False


def each(label, items, unit=""):
    """Iterate over items (a sized collection), showing progress."""
    with Progress(label, len(items), unit) as p:
        for item in items:
            yield item
            p.update()
