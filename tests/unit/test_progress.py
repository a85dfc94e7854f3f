"""Progress lines: updated in place on a terminal (a pty), one summary line
on a pipe or file, nothing when quiet; throttled."""

import io
import logging
import os
import pty
import threading

from borg_cyrus.tools import progress


def run_on_pty(n, quiet=False, interval=None):
    """Run a loop of n updates writing to a pty; what the terminal received.
    A thread drains the master side, or the writer blocks on a full buffer."""
    master, slave = pty.openpty()
    chunks = []

    def drain():
        while True:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: the slave side is closed
                return
            if not chunk:
                return
            chunks.append(chunk)

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    old = progress.INTERVAL
    if interval is not None:
        progress.INTERVAL = interval
    try:
        with open(slave, "w", closefd=True) as out:
            with progress.Progress("dumps", n, "users", stream=out, quiet=quiet) as p:
                for _ in range(n):
                    p.update()
    finally:
        progress.INTERVAL = old
    reader.join(10)
    os.close(master)
    return b"".join(chunks).decode().replace("\r\n", "\n")  # the tty's ONLCR


def test_terminal_gets_one_line_updated_in_place():
    text = run_on_pty(5000, interval=0)
    assert text.count("\n") == 1 and text.endswith("\n")
    assert text.count("\r") > 100  # redrawn, not appended
    assert "borg-cyrus: dumps: 2500/5000 users" in text
    final = text.rstrip("\r\n").rsplit("\r", 1)[-1]
    assert final.startswith("borg-cyrus: dumps: 5000/5000 users in ") and final.strip().endswith(" s")


def test_terminal_updates_are_throttled():
    text = run_on_pty(200000)  # a fast loop: far fewer than 10 redraws a second of it
    assert text.count("\r") <= 3 + 10 * 5


def test_pipe_gets_exactly_one_summary_line():
    buf = io.StringIO()
    with progress.Progress("counts", 10000, "mailboxes", stream=buf, quiet=False) as p:
        for _ in range(10000):
            p.update()
    lines = buf.getvalue().splitlines()
    assert len(lines) == 1 and "\r" not in buf.getvalue()
    assert lines[0].startswith("borg-cyrus: counts: 10000/10000 mailboxes in ")


def test_each_and_failure_and_quiet():
    buf = io.StringIO()
    assert list(progress.each("verify: imap", [1, 2, 3], "mailboxes")) == [1, 2, 3]
    try:
        with progress.Progress("restore: extract", stream=buf, unit="archive x", quiet=False):
            raise RuntimeError
    except RuntimeError:
        pass
    assert buf.getvalue().startswith("borg-cyrus: restore: extract: archive x in ") and "(failed)" in buf.getvalue()
    assert run_on_pty(100, quiet=True) == ""
    logger = logging.getLogger("borg_cyrus")
    old = logger.level
    try:
        for level, shown in ((logging.INFO, True), (logging.WARNING, False)):  # borg-cyrus, borg-cyrus -q
            logger.setLevel(level)
            buf = io.StringIO()
            with progress.Progress("dumps", 3, stream=buf) as p:
                p.update(3)
            assert bool(buf.getvalue()) is shown
    finally:
        logger.setLevel(old)
    quiet = io.StringIO()
    with progress.Progress("dumps", 3, stream=quiet, quiet=True) as p:
        p.update(3)
    assert quiet.getvalue() == ""
