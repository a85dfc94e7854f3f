"""The cyrus user racing root: a process running as cyrus (as a Cyrus daemon
compromised through a message-parsing bug would) watches for the private
point-in-time config directory of a snapshot backup (it is named in every
Cyrus tool's command line, `-C <dir>/imapd.conf`, and old versions put it in
/var/tmp) and plants symlinks to a root-only file in it, as fast as it can,
during five backups. The file must stay as it was: content, owner, mode."""

import os
import stat
import subprocess
import sys
import textwrap
import time

import pytest

from borg_cyrus.tools.demo import populate
from support.common import cli
from support.setups import Setup

pytestmark = [
    pytest.mark.needs_root,
    pytest.mark.slow,
    pytest.mark.skipif(os.environ.get("VMH_GUEST") == "1", reason="host test"),
]

RACER = textwrap.dedent("""
    import os, sys
    victim, stop, log = sys.argv[1:4]
    names = ["mailboxes.db", "annotations.db", "quota", "imapd.conf", "db", "proc", "lock", "socket", "cyrus",
             "user", "a", "quota.tmp"]
    tries = 0
    while not os.path.exists(stop):
        dirs = set()
        try:
            dirs.update("/var/tmp/" + n for n in os.listdir("/var/tmp") if n.startswith("borg-cyrus-pit-"))
        except OSError:
            pass
        for pid in os.listdir("/proc"):
            if not pid.isdigit():
                continue
            try:
                argv = open(f"/proc/{pid}/cmdline", "rb").read().split(b"\\0")
            except OSError:
                continue
            for i, a in enumerate(argv[:-1]):
                if a == b"-C":
                    dirs.add(os.path.dirname(argv[i + 1].decode("utf-8", "replace")))
        for d in dirs:
            for sub in ("", "cyrus", "cyrus/quota", "quota", "cyrus/db"):
                for n in names:
                    tries += 1
                    try:
                        os.symlink(victim, os.path.join(d, sub, n))
                        open(log, "a").write(os.path.join(d, sub, n) + "\\n")
                    except OSError:
                        pass
    open(log, "a").write(f"tries {tries}\\n")
""")


def test_planted_symlinks_in_the_point_in_time_dir(base_dir):
    s = Setup(base_dir, "btrfs")
    try:
        sb = s.sb.create()
        populate(sb)
        bc = s.config()
        secret = os.path.join(base_dir, "root-only")
        with open(secret, "wb") as f:
            f.write(b"root's secret\n")
        os.chmod(secret, 0o600)
        before = os.stat(secret)
        old_tmp = {n for n in os.listdir("/var/tmp") if n.startswith("borg-cyrus-pit-")}
        racer_py = os.path.join(base_dir, "racer.py")
        with open(racer_py, "w") as f:
            f.write(RACER)
        stop, log = os.path.join(base_dir, "stop"), os.path.join(base_dir, "racer.log")
        open(log, "w").close()
        os.chmod(log, 0o666)
        os.chmod(racer_py, 0o644)
        racer = subprocess.Popen(
            [
                "setpriv",
                f"--reuid={sb.uid}",
                f"--regid={sb.gid}",
                "--clear-groups",
                sys.executable,
                racer_py,
                secret,
                stop,
                log,
            ]
        )
        try:
            time.sleep(0.5)
            for _ in range(5):
                r = cli("before", config=bc)
                cli("after", config=bc, check=0)
                assert r.returncode == 0, r.stderr
        finally:
            open(stop, "w").close()
            racer.wait(30)
        planted = open(log).read()
        assert "tries" in planted and int(planted.rsplit("tries ", 1)[1]) > 100, planted[-500:]
        after = os.stat(secret)
        assert open(secret, "rb").read() == b"root's secret\n"
        assert (after.st_uid, after.st_gid, stat.S_IMODE(after.st_mode)) == (0, 0, 0o600)
        assert (after.st_ino, after.st_nlink) == (before.st_ino, 1)
        # nothing of the run is left, and no private directory in a shared tmp was used
        assert not [n for n in os.listdir(s.work) if n.startswith("pit-")]
        assert not {n for n in os.listdir("/var/tmp") if n.startswith("borg-cyrus-pit-")} - old_tmp
    finally:
        s.destroy()


def test_point_in_time_dir_layout(base_dir):
    """The private config dir: root's 0711 with a root-owned imapd.conf, the
    cyrus user's writable copies below cyrus/ (checked while `before` waits
    at its last step)."""
    s = Setup(base_dir, "btrfs")
    try:
        sb = s.sb.create()
        populate(sb)
        bc = s.config()
        mark = os.path.join(base_dir, "paused")
        p = subprocess.Popen(
            [sys.executable, "-m", "borg_cyrus", "-c", bc, "before"],
            env=dict(os.environ, BORG_CYRUS_FAULT="patterns-written:PAUSE", BORG_CYRUS_FAULT_MARK=mark),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            deadline = time.monotonic() + 60
            while not os.path.exists(mark) and time.monotonic() < deadline:
                time.sleep(0.05)
            pits = [os.path.join(s.work, n) for n in os.listdir(s.work) if n.startswith("pit-")]
            assert len(pits) == 1
            st = os.lstat(pits[0])
            assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (0, 0o711)
            conf = os.lstat(os.path.join(pits[0], "imapd.conf"))
            assert (conf.st_uid, stat.S_IMODE(conf.st_mode)) == (0, 0o644)
            assert sorted(os.listdir(pits[0])) == ["cyrus", "imapd.conf"]
            for dirpath, _dirnames, filenames in os.walk(os.path.join(pits[0], "cyrus")):
                for n in [dirpath] + [os.path.join(dirpath, x) for x in filenames]:
                    e = os.lstat(n)
                    assert (e.st_uid, e.st_gid) == (sb.uid, sb.gid) and not stat.S_ISLNK(e.st_mode), n
        finally:
            p.terminate()
            p.wait(30)
        assert sb.running()
        # SIGTERM undid the run: the private dir went with it
        assert not [n for n in os.listdir(s.work) if n.startswith("pit-")]
    finally:
        s.destroy()
