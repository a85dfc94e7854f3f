"""Logs under systemd: when stderr is the journal stream (JOURNAL_STREAM names
its device and inode, as systemd sets it), every line starts with its
sd-daemon(3) priority; anywhere else, lines are unchanged. Real processes
with a real file as stderr; nothing is mocked."""

import os
import subprocess
import sys

from support.common import ROOT

LEVELS = r"""
import logging, sys
from borg_cyrus.cli import setup_logging
setup_logging(1)
log = logging.getLogger("borg_cyrus.test")
log.error("it broke")
log.warning("look at this")
log.info("two lines\nof info")
log.debug("details")
"""


def _run(argv, tmp_path, journal):
    """(exit code, stderr text) of argv with stderr a file; journal: what
    JOURNAL_STREAM says ("self": that file's dev:ino, None: unset, else as given)."""
    err = tmp_path / "stderr"
    env = {k: v for k, v in os.environ.items() if k != "JOURNAL_STREAM"}
    env["PYTHONPATH"] = ROOT
    with open(err, "w") as f:
        st = os.fstat(f.fileno())
        if journal == "self":
            env["JOURNAL_STREAM"] = f"{st.st_dev}:{st.st_ino}"
        elif journal is not None:
            env["JOURNAL_STREAM"] = journal
        r = subprocess.run(argv, stderr=f, stdout=subprocess.DEVNULL, env=env, cwd=tmp_path)
    return r.returncode, err.read_text()


def test_priorities_when_stderr_is_the_journal(tmp_path):
    rc, out = _run([sys.executable, "-c", LEVELS], tmp_path, "self")
    assert rc == 0
    assert out.splitlines() == [
        "<3>borg-cyrus: error: it broke",
        "<4>borg-cyrus: warning: look at this",
        "<6>borg-cyrus: two lines",
        "<6>of info",
        "<7>borg-cyrus: details",
    ]


def test_borg_cyrus_error_line_in_the_journal(tmp_path):
    argv = [sys.executable, "-m", "borg_cyrus", "-c", str(tmp_path / "missing.yaml"), "config", "validate"]
    rc, out = _run(argv, tmp_path, "self")
    assert rc == 2
    lines = out.splitlines()
    assert len(lines) == 1 and lines[0].startswith("<3>borg-cyrus: error: "), out
    rc, out = _run(argv, tmp_path, None)
    assert rc == 2 and out.startswith("borg-cyrus: error: ") and "<3>" not in out


def test_no_prefix_elsewhere(tmp_path):
    plain = [
        "borg-cyrus: error: it broke",
        "borg-cyrus: warning: look at this",
        "borg-cyrus: two lines",
        "of info",
        "borg-cyrus: details",
    ]
    # not under systemd
    assert _run([sys.executable, "-c", LEVELS], tmp_path, None) == (0, "\n".join(plain) + "\n")
    # under systemd, but stderr redirected elsewhere (a file, a pipe): the stream is not this one
    other = os.stat(ROOT)
    assert _run([sys.executable, "-c", LEVELS], tmp_path, f"{other.st_dev}:{other.st_ino}")[1].splitlines() == plain
    assert _run([sys.executable, "-c", LEVELS], tmp_path, "garbage")[1].splitlines() == plain
