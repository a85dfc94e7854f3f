"""Boundaries between root and less trusted users, attacked for real:

- the cyrus user stops, kills or hangs the privilege-dropped child of a
  restore (safety/privdrop.py): root's command ends at once or at its
  deadline with one line, the child is killed and reaped, the lock is free;
- files planted where a predictable temp name would be (a symlink, a hard
  link, a file of another user) are never published, truncated or chmodded,
  and a directory someone else can write to or swap is refused (state.py);
- `init` refuses a passphrase file it did not write unless it is root's and
  private (tools/init.py).
"""

import json
import os
import pwd
import signal
import stat
import subprocess
import sys
import threading
import time

import pytest

from borg_cyrus import state
from borg_cyrus.errors import BorgCyrusError
from borg_cyrus.safety import privdrop
from borg_cyrus.tools import demo, metrics
from support.common import cli, env, wait_for
from support.restore_helpers import backup, delete_user

pytestmark = pytest.mark.needs_root

CYRUS = pwd.getpwnam("cyrus")
NOBODY = pwd.getpwnam("nobody")


def as_user(user, *argv):
    """Run argv as `user` (its uid and primary group, no other groups)."""
    return subprocess.run(
        list(argv), user=user.pw_uid, group=user.pw_gid, extra_groups=[], capture_output=True, text=True, check=True
    )


def gone(pid):
    """No such process, not even a zombie (so it was reaped)."""
    return not os.path.exists(f"/proc/{pid}")


def one_error(stderr):
    errors = [ln for ln in stderr.splitlines() if ln.startswith("borg-cyrus: error: ")]
    assert len(errors) == 1 and "Traceback" not in stderr, stderr
    return errors[0]


# -- 6. the cyrus user against root's waits ---------------------------------------------------


def cyrus_dir(base_dir, name):
    d = os.path.join(base_dir, name)
    os.mkdir(d, 0o700)
    os.chown(d, CYRUS.pw_uid, CYRUS.pw_gid)
    return d


@pytest.mark.slow
def test_restore_user_with_its_cyrus_child_stopped_ends_at_once_and_frees_the_lock(sandbox, base_dir):
    """SIGSTOP from the cyrus user to the child that places the files. The
    child waits at a fault point (BORG_CYRUS_FAULT=as-cyrus:PAUSE) only so the
    test can find it in time; the stop itself is real, sent as the cyrus user."""
    sb = sandbox
    a = sb.imap()
    assert a.create("user/alice")[0] == "OK" and a.create("user/alice/Work")[0] == "OK"
    a.logout()
    for i in range(3):
        sb.deliver("alice", demo.msg(f"before {i}", "body"))
    b = backup(sb, base_dir)
    delete_user(sb, "alice")
    mark = os.path.join(cyrus_dir(base_dir, "mark"), "child")

    argv = [sys.executable, "-m", "borg_cyrus", "-c", b["bc"], "restore", "user", "alice"]
    argv += ["--borgmatic-config", b["bm"]]
    fault = {"BORG_CYRUS_FAULT": "as-cyrus:PAUSE", "BORG_CYRUS_FAULT_MARK": mark}
    p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env(fault))
    child = None
    try:
        assert wait_for(lambda: os.path.exists(mark) and open(mark).read().endswith("\n"), 120), "no child"
        child = int(open(mark).read())
        with open(f"/proc/{child}/status") as f:
            status = dict(ln.split(":", 1) for ln in f.read().splitlines())
        assert status["Uid"].split()[1] == str(CYRUS.pw_uid) and int(status["PPid"]) == p.pid
        t0 = time.monotonic()
        as_user(CYRUS, "kill", "-STOP", str(child))
        out, err = p.communicate(timeout=60)
        took = time.monotonic() - t0
    finally:  # the child first: stopped, it keeps root's pipes (and lock) open
        if child and not gone(child):
            os.kill(child, signal.SIGKILL)
        if p.poll() is None:
            p.kill()
            p.communicate(timeout=30)
    assert p.returncode == 1, err
    line = one_error(err)
    assert "cyrus user" in line and "was stopped (SIGSTOP)" in line and "place_as_cyrus" in line, line
    assert took < 30, took
    assert gone(child)
    # the lock is free: the next backup's `before` runs
    cli("before", config=b["bc"], check=0)
    cli("after", config=b["bc"], check=0)
    # and nothing is in the way of doing the restore again
    cli("restore", "user", "alice", "--borgmatic-config", b["bm"], config=b["bc"], check=0)
    a = sb.imap("alice")
    typ, data = a.select("INBOX")
    assert typ == "OK" and data == [b"3"], (typ, data)
    a.logout()


def _child_pid(path, timeout=30):
    assert wait_for(lambda: os.path.exists(path) and open(path).read().endswith("\n"), timeout)
    return int(open(path).read())


def _run_child(fn, signal_it=None, mark=None, **kw):
    """privdrop.run_as(cyrus, fn) with signal_it(child pid) sent meanwhile from
    another thread; (exception or result, seconds, child pid)."""
    got = {}

    def signaller():
        got["pid"] = _child_pid(mark)
        if signal_it:
            signal_it(got["pid"])

    t = threading.Thread(target=signaller, daemon=True)
    t.start()
    old = signal.signal(signal.SIGALRM, lambda *_: (_ for _ in ()).throw(TimeoutError("run_as still waiting")))
    signal.alarm(60)  # the code as it was waited for ever
    t0 = time.monotonic()
    try:
        res = privdrop.run_as(CYRUS.pw_uid, CYRUS.pw_gid, fn, **kw)
    except Exception as e:
        res = e
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
    took = time.monotonic() - t0
    t.join(30)
    return res, took, got.get("pid")


def _mark_then(mark, then):
    def fn():
        with open(mark, "w") as f:
            f.write(f"{os.getpid()}\n")
        then()

    return fn


@pytest.mark.parametrize("how", ["stopped", "killed", "hung"])
def test_cyrus_child_stopped_killed_or_hung_is_one_error_and_reaped(base_dir, how):
    """The child of run_as as the cyrus user could treat it: SIGSTOP, SIGKILL
    (sent as the cyrus user), or blocked on a FIFO the cyrus user planted
    (opening it for reading waits for a writer that never comes)."""
    d = cyrus_dir(base_dir, "c")
    mark = os.path.join(d, "pid")
    fifo = os.path.join(d, "planted")
    os.mkfifo(fifo, 0o600)
    os.chown(fifo, CYRUS.pw_uid, CYRUS.pw_gid)
    if how == "hung":
        fn, sig, kw = _mark_then(mark, lambda: open(fifo).read()), None, {"timeout": 3}
    else:
        fn = _mark_then(mark, lambda: time.sleep(120))
        sig = lambda pid: as_user(CYRUS, "kill", "-STOP" if how == "stopped" else "-KILL", str(pid))  # noqa: E731
        kw = {}
    res, took, pid = _run_child(fn, sig, mark, **kw)
    assert isinstance(res, privdrop.ChildFailed), res
    msg = str(res)
    assert "\n" not in msg and "as the cyrus user" in msg and f"pid {pid}" in msg, msg
    assert "_run_child" in msg, msg  # which step: the caller of run_as
    want = {"stopped": "was stopped (SIGSTOP)", "killed": "was killed by SIGKILL", "hung": "did not finish within 3 s"}
    assert want[how] in msg, msg
    assert took < (20 if how == "hung" else 10), took
    assert gone(pid)


def test_cyrus_child_dies_with_root(base_dir):
    """root's restore SIGKILLed (a systemd timeout, the OOM killer): its cyrus
    child, which inherited borg-cyrus's lock, must not live on holding it."""
    mark = os.path.join(cyrus_dir(base_dir, "c"), "pid")
    lock = os.path.join(base_dir, "lock")
    code = (
        "import os, sys, time\n"
        "from borg_cyrus import state\n"
        "from borg_cyrus.safety import privdrop\n"
        "def work():\n"
        f"    open({mark!r}, 'w').write(f'{{os.getpid()}}\\n')\n"
        "    time.sleep(120)\n"
        f"with state.lock({lock!r}):\n"
        f"    privdrop.run_as({CYRUS.pw_uid}, {CYRUS.pw_gid}, work)\n"
    )
    root = subprocess.Popen([sys.executable, "-c", code], env=env())
    child = None
    try:
        child = _child_pid(mark)
        root.kill()
        root.wait()
        assert wait_for(lambda: gone(child), 10), "the cyrus child outlived root"
        assert state.lock_holder(lock) is None
    finally:
        if root.poll() is None:
            root.kill()
            root.wait()
        if child and not gone(child):
            os.kill(child, signal.SIGKILL)


def test_cyrus_child_result_and_error_still_come_back(base_dir):
    assert privdrop.run_as(CYRUS.pw_uid, CYRUS.pw_gid, lambda: {"uid": os.getuid(), "n": [1] * 50000}) == {
        "uid": CYRUS.pw_uid,
        "n": [1] * 50000,  # more than a pipe holds
    }

    def fails():
        raise BorgCyrusError("one line from the child")

    with pytest.raises(privdrop.ChildFailed, match="^one line from the child$"):
        privdrop.run_as(CYRUS.pw_uid, CYRUS.pw_gid, fails)


# -- 8c. temp files -----------------------------------------------------------------------------


def fingerprint(paths):
    out = {}
    for p in paths:
        st = os.lstat(p)
        data = os.readlink(p) if stat.S_ISLNK(st.st_mode) else open(p, "rb").read()
        out[p] = (st.st_ino, st.st_uid, stat.S_IMODE(st.st_mode), st.st_nlink, data)
    return out


@pytest.mark.parametrize("writer", ["state", "metrics"])
@pytest.mark.parametrize("kind", ["hard link", "symlink", "nobody's file"])
def test_planted_temp_file_is_never_published_truncated_or_chmodded(base_dir, writer, kind):
    """Planted at the temp name the old scheme used (`.NAME.tmp-PID`, PID the
    writer's: this process's here), by root for the test but owned by nobody,
    as an earlier hole or a careless admin could leave it: a hard link to
    nobody's private file, a symlink to it, a 0666 file of nobody's."""
    d = os.path.join(base_dir, "out")
    os.mkdir(d, 0o755)
    victim = os.path.join(base_dir, "victim")
    with open(victim, "w") as f:
        f.write("nobody's secret\n")
    os.chown(victim, NOBODY.pw_uid, NOBODY.pw_gid)
    os.chmod(victim, 0o600)
    target = os.path.join(d, "borg-cyrus.prom")
    planted = os.path.join(d, f".borg-cyrus.prom.tmp-{os.getpid()}")
    if kind == "hard link":
        os.link(victim, planted)
    elif kind == "symlink":
        os.symlink(victim, planted)
    else:
        with open(planted, "w") as f:
            f.write("nobody's\n")
        os.chown(planted, NOBODY.pw_uid, NOBODY.pw_gid)
        os.chmod(planted, 0o666)
    before = fingerprint([planted, victim])

    for n in range(2):
        if writer == "state":
            state.write_atomic(target, f"run {n}\n", 0o644)
        else:
            metrics.write_textfile(target, f"run {n}\n")

    assert fingerprint([planted, victim]) == before  # nothing planted was touched
    st = os.lstat(target)
    assert stat.S_ISREG(st.st_mode) and st.st_uid == 0 and st.st_nlink == 1 and stat.S_IMODE(st.st_mode) == 0o644
    assert st.st_ino not in {v[0] for v in before.values()}
    assert open(target).read() == "run 1\n"
    assert sorted(os.listdir(d)) == sorted([os.path.basename(planted), "borg-cyrus.prom"])  # no temp file left


@pytest.mark.parametrize("case", ["others-write", "nobody-owns", "swapped-for-a-symlink"])
def test_directory_someone_else_controls_is_refused(base_dir, case):
    """The textfile's directory: world-writable, another user's, or swapped
    for a symlink inside a directory another user owns (Debian's
    /var/lib/prometheus is prometheus's): refused, nothing written anywhere."""
    elsewhere = os.path.join(base_dir, "elsewhere")
    os.mkdir(elsewhere, 0o755)
    if case == "swapped-for-a-symlink":
        parent = os.path.join(base_dir, "prometheus")
        os.mkdir(parent, 0o755)
        os.chown(parent, NOBODY.pw_uid, NOBODY.pw_gid)
        d = os.path.join(parent, "node-exporter")
        as_user(NOBODY, "ln", "-s", elsewhere, d)
    else:
        d = os.path.join(base_dir, "textfiles")
        os.mkdir(d)
        if case == "others-write":
            os.chmod(d, 0o777)
        else:
            os.chown(d, NOBODY.pw_uid, NOBODY.pw_gid)
    target = os.path.join(d, "borg-cyrus.prom")
    with pytest.raises(BorgCyrusError) as e:
        metrics.write_textfile(target, "x 1\n")
    assert "\n" not in str(e.value) and ("can write to" in str(e.value) or "belongs to" in str(e.value)), e.value
    assert os.listdir(elsewhere) == []
    assert not os.path.lexists(target) or os.path.islink(d)
    if case != "swapped-for-a-symlink":
        assert os.listdir(d) == []


# -- 8d. init and a planted passphrase file -----------------------------------------------------


def _init(sb, base_dir, passphrase, *extra):
    args = ["init", "--imapd-conf", sb.imapd_conf, "--borg-cyrus-config", os.path.join(base_dir, "bc.yaml")]
    args += ["--borgmatic-config", os.path.join(base_dir, "bm.yaml"), "--repository", os.path.join(base_dir, "r")]
    args += ["--encryption", "repokey-blake2", "--passphrase-file", passphrase, "--work-directory"]
    svc = sb.borg_cyrus_service()
    args += [os.path.join(base_dir, "work"), "--service=manager=command", f"--service=pidfile={svc['pidfile']}"]
    args += [f"--service=start_command={json.dumps(svc['start_command'])}", *extra]
    return cli(*args, input="")


@pytest.mark.parametrize(
    "owner,mode,dirmode",
    [("nobody", 0o644, 0o700), ("root", 0o644, 0o700), ("nobody", 0o600, 0o700), ("root", 0o640, 0o700)]
    + [("root", 0o600, 0o777)],
    ids=["nobody-0644", "root-0644", "nobody-0600", "root-0640", "root-0600-in-a-0777-directory"],
)
def test_init_refuses_a_passphrase_file_it_did_not_write(sandbox, base_dir, owner, mode, dirmode):
    secrets = os.path.join(base_dir, "secrets")
    os.mkdir(secrets)
    os.chmod(secrets, dirmode)
    pp = os.path.join(secrets, "passphrase")
    with open(pp, "w") as f:
        f.write("chosen by someone else\n")
    user = pwd.getpwnam(owner)
    os.chown(pp, user.pw_uid, user.pw_gid)
    os.chmod(pp, mode)
    before = fingerprint([pp])
    listing = sorted(os.listdir(base_dir))
    r = _init(sandbox, base_dir, pp)
    assert r.returncode == 2, r.stdout + r.stderr
    line = one_error(r.stderr)
    if dirmode == 0o700:
        assert f"passphrase file {pp} " in line and "not using it" in line, line
    else:
        assert f"passphrase file {pp}: {secrets} is a directory others can write to" in line, line
    assert fingerprint([pp]) == before
    assert sorted(os.listdir(base_dir)) == listing  # no config written


def test_init_reuses_roots_private_passphrase_and_writes_a_new_one(sandbox, base_dir):
    secrets = os.path.join(base_dir, "secrets")
    os.mkdir(secrets, 0o700)
    pp = os.path.join(secrets, "passphrase")
    with open(pp, "w") as f:
        f.write("root's own\n")
    os.chmod(pp, 0o600)
    r = _init(sandbox, base_dir, pp)
    assert r.returncode == 0, r.stdout + r.stderr
    assert open(pp).read() == "root's own\n" and f"cat {pp}" in open(os.path.join(base_dir, "bm.yaml")).read()
    new = os.path.join(secrets, "new")
    r = _init(sandbox, base_dir, new, "--force")
    assert r.returncode == 0, r.stdout + r.stderr
    st = os.lstat(new)
    assert st.st_uid == 0 and stat.S_IMODE(st.st_mode) == 0o600 and len(open(new).read().strip()) == 64
