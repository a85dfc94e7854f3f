"""Whatever kills the backup, Cyrus runs again: borgmatic runs inside a real
control group (tests/cgunit.py) and every process of it is signalled at once,
as systemd does when the backup's unit is stopped (SIGTERM, then SIGKILL of
what is left), or all are SIGKILLed together. Cyrus must take an LMTP
delivery within the deadline and must not be a member of the dead unit; when
even the dead-man switch is killed, `doctor` names what was left and the
command that fixes it."""

import json
import os
import signal
import subprocess
import time

import pytest

from borg_cyrus.tools.demo import msg, populate
from support.cgunit import Unit, hierarchy
from support.common import cli, env, sandbox_config, wait_for, write_config
from support.fsimages import is_frozen
from support.helpers import borgmatic_config, init_repo, read_yaml
from support.setups import Setup

pytestmark = [
    pytest.mark.needs_root,
    pytest.mark.slow,
    pytest.mark.skipif(hierarchy()[0] is None, reason="no cgroup hierarchy to make a unit in"),
    pytest.mark.skipif(os.environ.get("VMH_GUEST") == "1", reason="host test"),
]

DEADLINE = 10


def _steps(work):
    try:
        return [s["kind"] for s in json.load(open(os.path.join(work, "state.json")))["steps"]]
    except (OSError, ValueError):
        return []


def takes_mail(sb, timeout=DEADLINE):
    """Cyrus runs and an LMTP delivery succeeds within timeout."""

    def ok():
        if not sb.running():
            return False
        try:
            sb.deliver("bob", msg("probe", f"probe {time.time()}"))
            return True
        except OSError:
            return False

    return wait_for(ok, timeout)


@pytest.fixture
def unit(request):
    u = Unit(f"bct-{os.getpid()}-{abs(hash(request.node.name)) % 10**8}")
    yield u
    u.remove()


def slow_borgmatic(base, repo, patterns, seconds=60):
    """The shipped sample config, plus a long step after `before` (a slow
    `borg create` stands in here: borgmatic waits on a real child process)."""
    cfg = borgmatic_config(base, repo, patterns)
    data = read_yaml(cfg)
    data["commands"].insert(1, {"before": "action", "when": ["create"], "run": [f"sleep {seconds}"]})
    return write_config(cfg, data)


def start(unit, cfg, bc, extra=None):
    return unit.start(
        ["borgmatic", "-c", cfg, "create", "--verbosity", "1"],
        env=env({"BORG_CYRUS_CONFIG": bc, **(extra or {})}),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


def master_outside(sb, unit):
    pid = sb.pid()
    return pid is not None and not unit.contains(pid)


@pytest.fixture
def stopmaster(populated, base_dir):
    sb = populated
    bc = sandbox_config(sb, base_dir, mode="stop-master")
    repo = os.path.join(base_dir, "repo")
    cfg = slow_borgmatic(base_dir, repo, os.path.join(base_dir, "work", "patterns"))
    init_repo(cfg)
    return sb, bc, cfg, os.path.join(base_dir, "work")


@pytest.mark.parametrize("how", ["systemctl-stop", "sigkill-all"])
def test_stop_master_survives_the_unit_being_killed(stopmaster, unit, how):
    sb, bc, cfg, work = stopmaster
    p = start(unit, cfg, bc)
    assert wait_for(lambda: not sb.running() and "service-stopped" in _steps(work), 60), _steps(work)
    watchdog = json.load(open(os.path.join(work, "state.json")))["steps"][0]["process"]["pid"]
    assert not unit.contains(watchdog), "the dead-man switch must not be in the backup's control group"
    t0 = time.monotonic()
    if how == "systemctl-stop":
        hit, killed = unit.stop(signal.SIGTERM, timeout=3)
    else:
        hit = unit.signal_all(signal.SIGKILL)
    p.wait(30)
    assert p.pid in hit
    assert takes_mail(sb), "Cyrus is not running / not taking mail after the unit was killed"
    assert time.monotonic() - t0 < DEADLINE
    assert master_outside(sb, unit), "the restarted Cyrus is in the dead unit's control group"
    assert wait_for(lambda: not unit.pids(), 10)
    time.sleep(1)
    assert sb.running(), "Cyrus died with the unit"
    # whatever the run left is reported until it is cleaned up; then everything is clean
    r = cli("doctor", config=bc)
    if os.path.exists(os.path.join(work, "state.json")):
        assert r.returncode == 1 and "ended without `after`" in r.stdout and "run `borg-cyrus after`" in r.stdout
        assert "it runs again now" in r.stdout
    cli("after", config=bc, check=0)
    assert cli("doctor", config=bc).returncode == 0
    assert sb.running()


def test_everything_killed_including_the_watchdog_is_reported(stopmaster, unit):
    """SIGKILL of the unit and of the dead-man switch: nothing can start Cyrus.
    `doctor` says so and names the fix; the fix works."""
    sb, bc, cfg, work = stopmaster
    p = start(unit, cfg, bc)
    assert wait_for(lambda: not sb.running() and "service-stopped" in _steps(work), 60)
    watchdog = json.load(open(os.path.join(work, "state.json")))["steps"][0]["process"]["pid"]
    os.kill(watchdog, signal.SIGKILL)
    unit.signal_all(signal.SIGKILL)
    p.wait(30)
    time.sleep(2)
    assert not sb.running()
    r = cli("doctor", config=bc)
    assert r.returncode == 1
    assert "Cyrus stopped by borg-cyrus (STILL STOPPED)" in r.stdout and "run `borg-cyrus after`" in r.stdout
    r = cli("after", config=bc, check=0)
    assert takes_mail(sb, 30)
    assert cli("doctor", config=bc).returncode == 0


@pytest.mark.parametrize("how", ["systemctl-stop", "sigkill-all"])
def test_quiesce_stop_master_window_killed(base_dir, unit, how):
    """btrfs with `quiesce: stop-master`: the unit is killed while Cyrus is
    stopped for the snapshot. (The run waits at the `quiesced` fault point so
    the kill lands inside the window; the kill itself is real.)"""
    s = Setup(base_dir, "btrfs")
    try:
        sb = s.sb.create()
        populate(sb)
        bc = s.config(snapshot={"quiesce": "stop-master", "deadline": 30})
        repo = os.path.join(base_dir, "repo")
        cfg = borgmatic_config(base_dir, repo, os.path.join(s.work, "patterns"))
        init_repo(cfg)
        mark = os.path.join(base_dir, "paused")
        p = start(unit, cfg, bc, {"BORG_CYRUS_FAULT": "quiesced:PAUSE", "BORG_CYRUS_FAULT_MARK": mark})
        assert wait_for(lambda: os.path.exists(mark), 60)
        assert not sb.running()
        t0 = time.monotonic()
        if how == "systemctl-stop":
            unit.stop(signal.SIGTERM, timeout=3)
        else:
            unit.signal_all(signal.SIGKILL)
        p.wait(30)
        assert takes_mail(sb), "Cyrus not taking mail after the unit was killed inside the window"
        assert time.monotonic() - t0 < DEADLINE
        assert master_outside(sb, unit)
        assert not is_frozen(s.mnt)
        # the next backup cleans up and leaves nothing behind
        r = subprocess.run(
            ["borgmatic", "-c", cfg, "create"], env=env({"BORG_CYRUS_CONFIG": bc}), capture_output=True, text=True
        )
        assert r.returncode == 0, r.stdout + r.stderr
        assert s.leftovers() == [] and sb.running()
        assert cli("doctor", config=bc).returncode == 0
    finally:
        s.destroy()
