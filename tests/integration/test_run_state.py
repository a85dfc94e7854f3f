"""before/after with a real Cyrus: stop-master, teardown, crash recovery, locking, dry run."""

import fcntl
import json
import os
import re
import signal
import subprocess
import time

import pytest

from support.common import cli, sandbox_config, tools_with

pytestmark = pytest.mark.needs_root


@pytest.fixture
def setup(populated, base_dir):
    cfg = sandbox_config(populated, base_dir, mode="stop-master", exclude={"mailboxes": ["user/*/Junk"]})
    return populated, cfg, os.path.join(base_dir, "work")


@pytest.fixture
def owner():
    """A stand-in for the borgmatic process that owns a run."""
    procs = []

    def make():
        p = subprocess.Popen(["sleep", "300"])
        procs.append(p)
        return p

    yield make
    for p in procs:
        p.kill()
        p.wait()


def test_stop_master_stops_and_restarts(setup):
    sb, cfg, work = setup
    pid = sb.pid()
    cli("before", config=cfg, check=0)
    assert not sb.running()
    state = json.load(open(os.path.join(work, "state.json")))
    assert [s["kind"] for s in state["steps"]] == ["watchdog", "service-stopped"]
    watchdog = state["steps"][0]["process"]["pid"]
    assert os.path.exists(f"/proc/{watchdog}")
    assert os.stat(os.path.join(work, "state.json")).st_mode & 0o777 == 0o600
    assert os.stat(os.path.join(work, "dump")).st_mode & 0o777 == 0o700
    for name in os.listdir(os.path.join(work, "dump")):
        p = os.path.join(work, "dump", name)
        if os.path.isfile(p):
            assert os.stat(p).st_mode & 0o777 == 0o600, name
    r = cli("after", config=cfg, check=0)
    assert "after: done" in r.stderr
    assert sb.running() and sb.pid() != pid
    assert not os.path.exists(os.path.join(work, "state.json"))
    time.sleep(0.2)
    assert (
        not os.path.exists(f"/proc/{watchdog}") or open(f"/proc/{watchdog}/stat").read().split(")")[1].split()[0] == "Z"
    )
    # idempotent
    assert "nothing to tear down" in cli("after", config=cfg, check=0).stderr
    assert sb.running()
    # the patterns file stays valid (borgmatic reads it for restore/check too)
    assert open(os.path.join(work, "patterns")).read().count("\nR ") >= 4


def test_crashed_run_is_cleaned_up_by_next_before(setup, owner):
    sb, cfg, work = setup
    crashed = owner()
    cli("before", config=cfg, check=0, extra_env={"BORG_CYRUS_OWNER_PID": str(crashed.pid)})
    assert not sb.running()
    crashed.kill()  # borgmatic died: `after` never ran
    crashed.wait()
    # the dead-man switch notices and starts Cyrus again by itself
    deadline = time.time() + 10
    while not sb.running() and time.time() < deadline:
        time.sleep(0.05)
    assert sb.running(), "the watchdog must start Cyrus when the owning borgmatic dies"
    while not os.path.exists(os.path.join(work, "watchdog.log")) and time.time() < deadline:
        time.sleep(0.05)
    log = open(os.path.join(work, "watchdog.log")).read()
    assert "watchdog fired" in log and "started Cyrus" in log
    r = cli("before", config=cfg, check=0)
    assert "cleaning up after an earlier run that did not finish" in r.stderr
    assert not sb.running()  # stopped again, by this run
    cli("after", config=cfg, check=0)
    assert sb.running()


def test_second_run_refused_while_first_runs(setup, owner):
    """A second run waits busy.wait, then fails (exit 1: borgmatic reports an
    error); with busy.action: skip it exits 75 (borgmatic's soft skip)."""
    sb, cfg, work = setup
    with open(cfg, "a") as f:
        f.write("busy: {wait: 2}\n")
    first = owner()
    cli("before", config=cfg, check=0, extra_env={"BORG_CYRUS_OWNER_PID": str(first.pid)})
    patterns = open(os.path.join(work, "patterns")).read()
    t0 = time.monotonic()
    r = cli("before", config=cfg)
    assert 2 <= time.monotonic() - t0 < 15, r.stderr
    assert r.returncode == 1 and "is still running after waiting 2 s" in r.stderr and str(first.pid) in r.stderr
    assert not sb.running()  # untouched: the first run keeps Cyrus stopped
    assert open(os.path.join(work, "patterns")).read() == patterns
    skip = cfg + ".skip.yaml"
    with open(cfg) as f, open(skip, "w") as g:
        g.write(f.read().replace("busy: {wait: 2}", "busy: {wait: 0, action: skip}"))
    os.chmod(skip, 0o600)
    r = cli("before", config=skip)
    assert r.returncode == 75 and "skipping this one" in r.stderr
    # a run older than busy.max_run_age is stuck: an error even with skip
    state = json.load(open(os.path.join(work, "state.json")))
    state["started"] = "2020-01-01T03:00:00+00:00"
    with open(os.path.join(work, "state.json"), "w") as f:
        json.dump(state, f)
    r = cli("before", config=skip)
    assert r.returncode == 1 and "looks stuck" in r.stderr
    r = cli("doctor", config=cfg)
    assert r.returncode == 1 and "looks stuck" in r.stdout
    # the second borgmatic's `after` (it runs even when `before` failed) must not tear down the first run
    r = cli("after", config=cfg, check=0)
    assert "leaving it alone" in r.stderr and not sb.running()
    cli("after", config=cfg, check=0, extra_env={"BORG_CYRUS_OWNER_PID": str(first.pid)})
    assert sb.running()


def test_lock_held_means_busy(setup):
    sb, cfg, work = setup
    os.makedirs(work, 0o700, exist_ok=True)
    fd = os.open(os.path.join(work, "lock"), os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX)
    with open(cfg, "a") as f:
        f.write("busy: {wait: 1}\n")
    try:
        r = cli("before", config=cfg)
    finally:
        os.close(fd)
    assert r.returncode == 1 and "another borg-cyrus command holds" in r.stderr
    assert sb.running() and not os.path.exists(os.path.join(work, "state.json"))


def test_sigterm_during_before_undoes_everything(setup):
    """SIGTERM while before runs: Cyrus is started again, nothing half-done stays."""
    sb, cfg, work = setup
    # make the dump slow enough to be hit: a ctl_mboxlist wrapper that sleeps
    # (a fake, because a real dump of 14 mailboxes takes milliseconds)
    tools = tools_with(
        os.path.join(os.path.dirname(cfg), "slowtools"),
        "ctl_mboxlist",
        'sleep 30\nexec /usr/lib/cyrus/bin/ctl_mboxlist "$@"',
    )
    with open(cfg, "a") as f:
        f.write(f"cyrus_tools_directory: {tools}\n")
    import sys

    p = subprocess.Popen([sys.executable, "-m", "borg_cyrus", "-c", cfg, "before"], stderr=subprocess.PIPE, text=True)
    import time

    deadline = time.time() + 20
    while sb.running() and time.time() < deadline:
        time.sleep(0.05)
    assert not sb.running()
    time.sleep(0.3)
    p.send_signal(signal.SIGTERM)
    _, err = p.communicate(timeout=60)
    assert p.returncode != 0
    assert sb.running(), err
    assert not os.path.exists(os.path.join(work, "state.json"))
    assert not os.path.exists(os.path.join(work, "dump"))
    assert not [n for n in os.listdir(work) if n.startswith("dump.")]


def test_dry_run_changes_nothing(setup):
    sb, cfg, work = setup
    pid = sb.pid()
    r = cli("--dry-run", "before", config=cfg, check=0)
    assert "would send SIGTERM" in r.stderr
    assert r.stdout.startswith("# borg patterns written by borg-cyrus")
    assert f"R {sb.confdir}" in r.stdout
    assert sb.pid() == pid
    assert not os.path.exists(os.path.join(work, "patterns"))
    assert not os.path.exists(os.path.join(work, "state.json"))
    assert not os.path.exists(os.path.join(work, "dump"))


def test_doctor(setup):
    sb, cfg, work = setup
    r = cli("doctor", config=cfg)
    assert r.returncode == 0, r.stdout + r.stderr
    out = r.stdout
    assert f"partition     second: {sb.partitions['second']}" in out
    assert "mailboxes     14 (2 with messages excluded)" in out
    assert "deliver.db" in out and "no problems found" in out
    assert re.search(r"^cyrus         cyrus-imapd 3\.6", out, re.M) and "mailboxes twoskip" in out
    assert not os.path.exists(os.path.join(work, "patterns"))
    data = json.loads(cli("doctor", "--json", config=cfg, check=0).stdout)
    assert data["excluded_mailboxes"] == ["user.alice.Junk", "user.dave.Junk"]
