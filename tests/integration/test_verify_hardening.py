"""The restore drill (`borg-cyrus verify`) against a local user, a forger of
archives and the shipped unit's settings.

One real backup of the demo server is shared by the tests of this module
(they only read it: forged archives are added to its repository). Each drill
that uses the default directory runs in a private mount namespace with a fresh
tmpfs on /var/tmp, so the shared tmp directory a local attacker would use is
the test's own (nothing on the host's /var/tmp is touched)."""

import configparser
import json
import os
import shlex
import shutil
import stat
import subprocess
import sys

import pytest

from support.common import BASE, ROOT, cli, env, wait_for
from support.helpers import latest_archive, snapshot
from support.restore_helpers import backup

pytestmark = [pytest.mark.needs_root, pytest.mark.slow]

UNIT = os.path.join(ROOT, "contrib", "systemd", "borg-cyrus-verify.service")


@pytest.fixture(scope="module")
def world():
    from borg_cyrus.cyrus.sandbox import Sandbox
    from borg_cyrus.tools.demo import populate

    base = os.path.join(BASE, "verifyh")
    if os.path.exists(base):
        for sub in os.listdir(base):
            Sandbox(os.path.join(base, sub)).stop()
        shutil.rmtree(base)
    os.makedirs(base, 0o755)
    os.chmod(base, 0o755)
    sb = Sandbox(os.path.join(base, "cyrus"), partitions=("default", "second")).create().start()
    populate(sb)
    b = backup(sb, base, mode="stop-master")
    b["sb"], b["base"], b["archive"] = sb, base, latest_archive(b["repo"])
    yield b
    sb.stop()
    shutil.rmtree(base, ignore_errors=True)


def verify_argv(b, *args):
    return [sys.executable, "-m", "borg_cyrus", "-c", b["bc"], "verify", "--borgmatic-config", b["bm"], *args]


def one_error(r):
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("borg-cyrus: error:")]
    assert r.returncode != 0 and len(errors) == 1 and "Traceback" not in r.stderr, (r.stdout, r.stderr)
    return errors[0]


def forge(b, name, plant=None, change=None):
    """Archive `name`: the real backup with change(manifest) applied to its
    dump's manifest.json and plant(extracted root) run on its files."""
    root = os.path.join(b["base"], f"forge-{name}")
    shutil.rmtree(root, ignore_errors=True)
    os.makedirs(root)
    subprocess.run(["borg", "extract", f"{b['repo']}::{b['archive']}"], cwd=root, env=env(), check=True)
    if change:
        mpath = root + b["work"] + "/dump/manifest.json"
        with open(mpath) as f:
            manifest = json.load(f)
        change(manifest)
        with open(mpath, "w") as f:
            json.dump(manifest, f)
    if plant:
        plant(root)
    subprocess.run(
        ["borg", "create", f"{b['repo']}::{name}", *sorted(os.listdir(root))],
        cwd=root,
        env=env(),
        check=True,
        capture_output=True,
    )
    shutil.rmtree(root)
    return name


# A drill (and optionally a racer as `nobody`) in a private mount namespace whose
# /var/tmp is a fresh 1777 tmpfs, as a machine's shared tmp directory is.
DRIVER = r"""
import json, os, signal, subprocess, sys, time
spec = json.loads(sys.argv[1])
subprocess.run(["mount", "-t", "tmpfs", "-o", "mode=1777,size=64m", "tmpfs", "/var/tmp"], check=True)
racer = None
if spec.get("racer"):
    racer = subprocess.Popen(
        ["setpriv", "--reuid", "nobody", "--regid", "nogroup", "--clear-groups", "/usr/bin/python3", "-c",
         spec["racer"], json.dumps(spec["watch"])],
        cwd="/", env={"PATH": "/usr/bin:/bin"}, stdout=subprocess.PIPE, text=True)
    ready = racer.stdout.readline()  # the racer has pre-created what it could
runs = []
for argv in spec["commands"]:
    r = subprocess.run(argv, capture_output=True, text=True)
    runs.append({"rc": r.returncode, "stdout": r.stdout, "stderr": r.stderr})
out = {"runs": runs}
if racer:
    racer.send_signal(signal.SIGTERM)
    out["racer"] = json.loads(racer.communicate(timeout=60)[0])
# everything on the shared tmp directory: who made it
tmp = []
for dirpath, dirnames, filenames in os.walk("/var/tmp"):
    for n in dirnames + filenames:
        st = os.lstat(os.path.join(dirpath, n))
        tmp.append([os.path.join(dirpath, n), st.st_uid])
out["tmp"] = tmp
print(json.dumps(out))
"""


def in_private_tmp(commands, racer=None, watch=()):
    r = subprocess.run(
        [
            "unshare",
            "--mount",
            "--propagation",
            "private",
            sys.executable,
            "-c",
            DRIVER,
            json.dumps({"commands": commands, "racer": racer, "watch": list(watch)}),
        ],
        capture_output=True,
        text=True,
        env=env(),
        timeout=900,
    )
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    out["runs"] = [subprocess.CompletedProcess([], x["rc"], x["stdout"], x["stderr"]) for x in out["runs"]]
    return out


# `nobody`: pre-creates the directories it is told to watch where it can, then
# swaps (renameat2 RENAME_EXCHANGE) every new entry of them for a directory of
# its own whose `root` is a symlink to `/`.
RACER = r"""
import ctypes, json, os, signal, sys
libc = ctypes.CDLL(None, use_errno=True)
libc.renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
AT_FDCWD, RENAME_EXCHANGE = -100, 2
watch = json.loads(sys.argv[1])
stop = []
signal.signal(signal.SIGTERM, lambda *a: stop.append(1))
for w in watch:
    try:
        os.mkdir(w, 0o777)
        os.chmod(w, 0o777)
    except OSError:
        pass
seen, swaps, n = set(), [], 0

def decoy(w):
    global n
    n += 1
    d = os.path.join(w, f".decoy-{n}")
    os.mkdir(d, 0o777)
    os.symlink("/", os.path.join(d, "root"))
    seen.add(d)
    return d

ready = {}
print("ready", flush=True)
while not stop:
    for w in watch:
        try:
            names = os.listdir(w)
        except OSError:
            continue
        for name in names:
            p = os.path.join(w, name)
            if p in seen:
                continue
            seen.add(p)
            try:
                d = ready.pop(w, None) or decoy(w)
            except OSError:
                continue
            if libc.renameat2(AT_FDCWD, p.encode(), AT_FDCWD, d.encode(), RENAME_EXCHANGE) == 0:
                swaps.append(p)
        try:
            ready.setdefault(w, None) or ready.__setitem__(w, decoy(w))
        except OSError:
            pass
print(json.dumps({"swaps": swaps, "listed": sorted(p for p in seen if "/.decoy-" not in p)}))
"""


def test_local_user_cannot_swap_the_drill_directory(world):
    """`nobody` races the drill with RENAME_EXCHANGE on the shared tmp directory
    and on the drill's default directory: the drill runs where nobody else
    can enter, the live server is untouched, and nothing lands in the attacker's
    directories. A --workdir the attacker owns, or a shared 1777 one, is refused."""
    b, sb = world, world["sb"]
    sb.deliver("alice", b"From: a@example.org\r\nSubject: after the backup\r\n\r\nnew\r\n")  # live differs from archive
    before = snapshot(sb)
    shared = "/var/tmp/borg-cyrus-verify"
    out = in_private_tmp(
        [verify_argv(b), verify_argv(b, "--workdir", shared), verify_argv(b, "--workdir", "/var/tmp")],
        racer=RACER,
        watch=[shared, os.path.join(b["work"], "verify")],
    )
    default, owned, sticky = out["runs"]
    assert default.returncode == 0 and "RESULT: OK" in default.stdout, (default.stdout, default.stderr)
    assert snapshot(sb) == before
    assert out["racer"]["swaps"] == [] and out["racer"]["listed"] == [], out["racer"]
    # only the attacker's own files on the shared tmp directory; none of root's
    assert [p for p, uid in out["tmp"] if uid == 0] == [], out["tmp"]
    line = one_error(owned)
    assert shared in line and "uid 65534" in line and "--workdir" in line, line
    line = one_error(sticky)
    assert "/var/tmp" in line and "writable by others" in line, line
    verify_dir = os.path.join(b["work"], "verify")
    st = os.lstat(verify_dir)
    assert stat.S_ISDIR(st.st_mode) and st.st_uid == 0 and not st.st_mode & 0o077 & ~0o011, oct(st.st_mode)
    assert os.listdir(verify_dir) == []


def _as_nobody(code, *args):
    r = subprocess.run(
        ["setpriv", "--reuid", "nobody", "--regid", "nogroup", "--clear-groups", "/usr/bin/python3", "-c", code, *args],
        capture_output=True,
        text=True,
        cwd="/",
        env={"PATH": "/usr/bin:/bin"},
    )
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


REACH = r"""
import json, os, sys
out = {}
for arg in sys.argv[1:]:
    op, p = arg.split(":", 1)
    try:
        os.listdir(p) if op == "list" else os.stat(p)
        out[arg] = "reached"
    except PermissionError:
        out[arg] = "denied"
    except OSError as e:
        out[arg] = type(e).__name__
print(json.dumps(out))
"""


def test_forged_set_uid_binary_and_device_node_never_reach_anyone(world):
    """A forged archive whose mailbox directory holds a set-uid-root binary, a
    set-gid one, a 0666 character device, a FIFO, a symlink and a set-gid
    world-writable directory: the drill passes (the mailboxes are whole) and
    names what it left out; nothing set-id or device-like is in its tree, and
    `nobody` cannot reach the tree at all."""
    b = world
    spool = b["sb"].partitions["default"]
    box = sorted(os.path.join(r, "cyrus.header") for r, _d, f in os.walk(spool) if "cyrus.header" in f)[0]
    d = os.path.dirname(box)

    def plant(root):
        for name, mode in (("evil-suid", 0o4755), ("evil-sgid", 0o2755)):
            with open(root + d + "/" + name, "w") as f:
                f.write("#!/bin/sh\nid\n")
            os.chmod(root + d + "/" + name, mode)
        os.mknod(root + d + "/evil-dev", 0o666 | stat.S_IFCHR, os.makedev(1, 3))
        os.chmod(root + d + "/evil-dev", 0o666)
        os.mkfifo(root + d + "/evil-fifo")
        os.symlink("/etc/shadow", root + d + "/evil-link")
        os.mkdir(root + d + "/evil-dir")
        os.chmod(root + d + "/evil-dir", 0o3777)

    name = forge(b, "setuid", plant=plant)
    workdir = os.path.join(b["base"], "drill-setuid")
    r = cli(
        "verify",
        "--borgmatic-config",
        b["bm"],
        "--archive",
        name,
        "--workdir",
        workdir,
        "--keep",
        "--json",
        config=b["bc"],
    )
    rep = json.loads(r.stdout)
    assert r.returncode == 0 and rep["ok"], (r.stdout, r.stderr)
    kept = rep["kept"]
    try:
        left = " ".join(rep["warnings"])
        for what in ("evil-dev (a character device)", "evil-fifo (a FIFO)", "evil-link (a symlink)"):
            assert what in left, rep["warnings"]
        tree = os.path.join(kept, "root")
        for dirpath, dirnames, filenames in os.walk(kept):
            for n in dirnames + filenames:
                p = os.path.join(dirpath, n)
                st = os.lstat(p)
                assert not st.st_mode & (stat.S_ISUID | stat.S_ISGID), (p, oct(st.st_mode))
                assert not (stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode)), p
                if p.startswith(tree + "/"):
                    assert stat.S_ISDIR(st.st_mode) or stat.S_ISREG(st.st_mode), (p, oct(st.st_mode))
                    assert stat.S_ISDIR(st.st_mode) or not st.st_mode & 0o111, (p, oct(st.st_mode))
        assert oct(os.lstat(tree + d + "/evil-suid").st_mode & 0o7777) == oct(0o644)
        # the tree is out of a local user's reach, the drill's directory too
        paths = [tree, tree + d, tree + d + "/evil-suid", tree + d + "/evil-sgid"]
        reach = _as_nobody(REACH, "list:" + kept, *("stat:" + p for p in paths))
        assert set(reach.values()) == {"denied"}, reach
        st = os.stat(kept)
        assert st.st_uid == 0 and not st.st_mode & 0o007, oct(st.st_mode)
    finally:
        shutil.rmtree(workdir)


def _victim(b, case):
    v = os.path.join(b["base"], f"victim-{case}")
    shutil.rmtree(v, ignore_errors=True)
    os.makedirs(v)
    os.chmod(v, 0o700)
    with open(os.path.join(v, "secret"), "w") as f:
        f.write("root's\n")
    return v


def _state(path):
    out = {}
    for dirpath, dirnames, filenames in os.walk(path):
        for n in [""] + dirnames + filenames:
            p = os.path.join(dirpath, n)
            st = os.lstat(p)
            out[p] = (st.st_uid, st.st_gid, st.st_mode)
    return out


@pytest.mark.parametrize("case", ["dotdot-sievedir", "symlink-sievedir", "newline-partition"])
def test_forged_layout_refused_and_nothing_given_to_cyrus(world, case):
    b, sb = world, world["sb"]
    victim = _victim(b, case)
    before = _state(victim)
    plant = change = None
    if case == "dotdot-sievedir":

        def change(m):
            m["layout"]["sievedir"] = "/.." * 30 + victim

        expect = "sievedir"
    elif case == "symlink-sievedir":

        def plant(root):
            shutil.rmtree(root + sb.sievedir)
            os.symlink(victim, root + sb.sievedir)

        expect = "sievedir"
    else:

        def change(m):
            m["layout"]["partitions"]["second"] += f"\nmetapartition-second: {victim}"

        expect = "partition-second"
    name = forge(b, case, plant=plant, change=change)
    workdir = os.path.join(b["base"], f"drill-{case}")
    r = cli("verify", "--borgmatic-config", b["bm"], "--archive", name, "--workdir", workdir, config=b["bc"])
    line = one_error(r)
    assert expect in line and "forged" in line, line
    assert _state(victim) == before
    assert os.listdir(workdir) == []


def unit_service():
    cp = configparser.ConfigParser(strict=False, interpolation=None)
    cp.optionxform = str
    cp.read(UNIT)
    return dict(cp["Service"])


# settings of the unit that only systemd as PID 1 applies (the tests of the units
# under real systemd cover them); any other one is applied below or this test fails
SYSTEMD_ONLY = {
    "Type",
    "ExecStart",
    "ExecStartPre",
    "ExecStopPost",
    "TimeoutStartSec",
    "TimeoutStopSec",
    "KillMode",
    "Restart",
    "EnvironmentFile",
    "StandardOutput",
    "StandardError",
    "SyslogIdentifier",
    "LogLevelMax",
    "Slice",
    "CPUWeight",
    "IOWeight",
    "MemoryHigh",
    "MemoryMax",
    "TasksMax",
}
SYSTEMD_ONLY_PREFIXES = ("Protect", "Private", "Restrict", "ReadWrite", "ReadOnly", "Inaccessible", "Lock")


def test_verify_passes_under_the_shipped_units_settings(world):
    """`verify --deep` as the weekly unit runs it: its UMask, Nice, CPU and I/O
    scheduling, with the default drill directory."""
    b = world
    svc = unit_service()
    wrap, umask = [], None
    for key, value in svc.items():
        if key == "UMask":
            umask = value
        elif key == "Nice":
            wrap += ["nice", "-n", value]
        elif key == "CPUSchedulingPolicy":
            wrap += ["chrt", f"--{value}", "0"]
        elif key == "IOSchedulingClass":
            wrap += ["ionice", "-c", {"realtime": "1", "best-effort": "2", "idle": "3"}[value]]
        elif key == "Environment":
            wrap += ["env", *shlex.split(value)]
        elif key == "NoNewPrivileges" and value in ("yes", "true", "1"):
            wrap += ["setpriv", "--no-new-privs"]
        else:
            assert key in SYSTEMD_ONLY or key.startswith(SYSTEMD_ONLY_PREFIXES), (
                f"{UNIT}: apply {key}= in this test or list it in SYSTEMD_ONLY"
            )
    assert umask == "0077", svc
    argv = svc["ExecStart"].split()
    assert argv[:2] == ["/usr/local/bin/borg-cyrus", "verify"], argv
    cmd = ["sh", "-c", f'umask {umask} && exec "$@"', "sh", *wrap, *verify_argv(b, *argv[2:])]
    (r,) = in_private_tmp([cmd])["runs"]
    assert r.returncode == 0 and "RESULT: OK" in r.stdout, (r.stdout, r.stderr)
    assert "hashed" in r.stdout
    assert os.listdir(os.path.join(b["work"], "verify")) == []


def test_a_rewritten_pidfile_makes_root_signal_nothing_else(world):
    """The throwaway server's pidfile is in a directory the cyrus user writes:
    one naming another process (here root's `sleep`) is not believed, and a
    FIFO planted there does not block the teardown."""
    from borg_cyrus.cyrus.sandbox import Sandbox

    other = subprocess.Popen(["sleep", "60"])
    try:
        sb = Sandbox(os.path.join(world["base"], "fake-drill"), tcp=False)
        os.makedirs(sb.rundir)
        with open(sb.pidfile, "w") as f:
            f.write(f"{other.pid}\n")
        assert sb.pid() is None
        sb.stop()
        assert other.poll() is None
        os.unlink(sb.pidfile)
        os.mkfifo(sb.pidfile)
        assert sb.pid() is None
        sb.stop()
        # a live server's master is found whatever its pidfile says
        live = world["sb"]
        real = live.pid()
        saved = open(live.pidfile).read()
        try:
            with open(live.pidfile, "w") as f:
                f.write(f"{other.pid}\n")
            assert real is not None and live.pid() == real
        finally:
            with open(live.pidfile, "w") as f:
                f.write(saved)
    finally:
        other.kill()
        other.wait()
        shutil.rmtree(os.path.join(world["base"], "fake-drill"), ignore_errors=True)


def test_a_killed_drill_is_removed_by_the_next_verify(world):
    """verify killed (SIGKILL) while its throwaway Cyrus runs leaves the
    extracted archive and that server behind: the next verify stops the
    server and removes the files, naming them."""
    import glob

    from borg_cyrus.cyrus.sandbox import Sandbox

    b = world
    workdir = os.path.join(b["base"], "drill-killed")
    p = subprocess.Popen(
        verify_argv(b, "--workdir", workdir), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env()
    )
    try:
        assert wait_for(lambda: glob.glob(os.path.join(workdir, "verify-*", "cyrus", "run", "imap")), 300)
    finally:
        p.kill()
        p.wait()
    (stale,) = glob.glob(os.path.join(workdir, "verify-*"))
    leftover = Sandbox(os.path.join(stale, "cyrus"), tcp=False)
    try:
        assert leftover.running()
        r = cli("verify", "--borgmatic-config", b["bm"], "--workdir", workdir, config=b["bc"])
        assert r.returncode == 0 and "RESULT: OK" in r.stdout, (r.stdout, r.stderr)
        assert f"removed {stale}, left by a restore drill that did not finish" in r.stderr, r.stderr
        assert not leftover.running() and os.listdir(workdir) == []
    finally:
        leftover.stop()
        shutil.rmtree(workdir, ignore_errors=True)
