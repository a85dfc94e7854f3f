"""Logs under systemd: when stderr is the journal stream (JOURNAL_STREAM names
its device and inode, as systemd sets it), every line starts with its
sd-daemon(3) priority; when stderr is a pipe read by a process whose stderr
is the journal (borgmatic running the hooks in a unit), records go to
journald's native socket, each with its priority, and only errors to stderr;
anywhere else, lines are unchanged. Real processes with a real file as
stderr and a real datagram socket standing in for journald's (the test reads
what a journald would); nothing is mocked."""

import os
import socket
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


# borgmatic under a unit: its stderr is the journal, it reads the hook's output
# from a pipe (through `sh -c`, which does not exec here) and logs it again
READER = r"""
import subprocess, sys
p = subprocess.run(["/bin/sh", "-c", sys.argv[1] + "; true"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
sys.stderr.write(p.stderr.decode())
"""
HOOK = r"""
import sys
from borg_cyrus import cli
cli.JOURNAL_SOCKET = sys.argv[1]
exec(sys.argv[2])
"""


def _hook_cmd(sock_path):
    import shlex

    return " ".join(shlex.quote(a) for a in [sys.executable, "-c", HOOK, str(sock_path), LEVELS])


def _journal(tmp_path):
    path = tmp_path / "journal.sock"
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(str(path))
    s.settimeout(0)
    return s, path


def _entries(sock):
    """Every datagram received, decoded as journald does (KEY=value, or KEY, newline, 64-bit length, value)."""
    out = []
    while True:
        try:
            data = sock.recv(1 << 16)
        except BlockingIOError:
            return out
        fields, i = {}, 0
        while i < len(data):
            nl = data.index(b"\n", i)
            line = data[i:nl]
            if b"=" in line:
                key, _, value = line.partition(b"=")
                i = nl + 1
            else:
                key, n = line, int.from_bytes(data[nl + 1 : nl + 9], "little")
                value = data[nl + 9 : nl + 9 + n]
                assert data[nl + 9 + n : nl + 10 + n] == b"\n"
                i = nl + 10 + n
            fields[key.decode()] = value.decode()
        out.append(fields)


def test_hook_under_a_unit_sends_records_to_journald(tmp_path):
    sock, path = _journal(tmp_path)
    rc, relogged = _run([sys.executable, "-c", READER, _hook_cmd(path)], tmp_path, "self")
    got = _entries(sock)
    assert rc == 0
    assert [(e["PRIORITY"], e["MESSAGE"]) for e in got] == [
        ("3", "error: it broke"),
        ("4", "warning: look at this"),
        ("6", "two lines\nof info"),
        ("7", "details"),
    ]
    assert {e["SYSLOG_IDENTIFIER"] for e in got} == {"borg-cyrus"}
    assert all(e["CODE_FILE"] == "<string>" and e["SYSLOG_PID"].isdigit() for e in got)
    # what the hook's reader logs again: the errors only (borgmatic's summary of a failed hook)
    assert relogged == "borg-cyrus: error: it broke\n"


def test_reader_not_the_journal(tmp_path):
    """The reader's stderr is not the journal stream (a terminal, a file): every line on stderr, nothing sent."""
    sock, path = _journal(tmp_path)
    other = os.stat(ROOT)
    rc, relogged = _run([sys.executable, "-c", READER, _hook_cmd(path)], tmp_path, f"{other.st_dev}:{other.st_ino}")
    assert rc == 0 and _entries(sock) == []
    assert relogged.splitlines() == [
        "borg-cyrus: error: it broke",
        "borg-cyrus: warning: look at this",
        "borg-cyrus: two lines",
        "of info",
        "borg-cyrus: details",
    ]


def test_journald_unreachable_falls_back_to_stderr(tmp_path):
    """The socket is there but nobody reads it (journald gone): each line on stderr once."""
    sock, path = _journal(tmp_path)
    sock.close()  # the path stays, sends fail (ECONNREFUSED)
    rc, relogged = _run([sys.executable, "-c", READER, _hook_cmd(path)], tmp_path, "self")
    assert rc == 0
    assert relogged.splitlines() == [
        "borg-cyrus: error: it broke",
        "borg-cyrus: warning: look at this",
        "borg-cyrus: two lines",
        "of info",
        "borg-cyrus: details",
    ]


def test_no_journald_socket(tmp_path):
    rc, relogged = _run([sys.executable, "-c", READER, _hook_cmd(tmp_path / "missing.sock")], tmp_path, "self")
    assert rc == 0 and len(relogged.splitlines()) == 5
