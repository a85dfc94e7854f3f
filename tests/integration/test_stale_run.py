"""A nightly stop-master run killed together with its dead-man switch leaves
Cyrus stopped. The next borg-cyrus run of any kind that takes the lock (the
hourly `before --dumps-only` of sample-borgmatic-hourly.yaml, a restore)
starts it again and says so, and `doctor` tells what happened until a backup
completes again."""

import json
import os
import signal
import subprocess

import pytest

from support.common import ROOT, cli, sandbox_config, wait_for, write_config
from support.helpers import borgmatic, borgmatic_config, init_repo, latest_archive, read_yaml, snapshot
from support.restore_helpers import subjects

pytestmark = [pytest.mark.needs_root, pytest.mark.slow]


def hourly_config(base, repo, work):
    """The shipped hourly sample, with only the repository (and the work directory's patterns file) changed:
    like the nightly, it runs borg-cyrus with the default config, so both share one work directory."""
    data = read_yaml(os.path.join(ROOT, "sample-borgmatic-hourly.yaml"))
    data["repositories"] = [{"path": repo, "label": "local"}]
    data["patterns_from"] = [os.path.join(work, "patterns-dumps")]
    return write_config(os.path.join(base, "borgmatic-hourly.yaml"), data)


def kill_nightly(sb, bc, work):
    """`before` of a nightly owned by a stand-in borgmatic, then borgmatic and the switch SIGKILLed together."""
    owner = subprocess.Popen(["sleep", "300"])
    try:
        cli("before", config=bc, check=0, extra_env={"BORG_CYRUS_OWNER_PID": str(owner.pid)})
        assert not sb.running()
        steps = json.load(open(os.path.join(work, "state.json")))["steps"]
        (switch,) = [s["process"]["pid"] for s in steps if s["kind"] == "watchdog"]
        os.kill(switch, signal.SIGKILL)  # first, so that it cannot notice borgmatic's death
    finally:
        owner.kill()
        owner.wait()
    assert wait_for(
        lambda: not os.path.exists(f"/proc/{switch}/cmdline") or not open(f"/proc/{switch}/cmdline").read(), 10
    )
    assert not wait_for(sb.running, 0.5), "nothing should have started Cyrus"


def test_killed_nightly_and_switch_then_hourly_and_restore_start_cyrus(populated, base_dir):
    sb = populated
    work = os.path.join(base_dir, "work")
    bc = sandbox_config(sb, base_dir, mode="stop-master")
    repo = os.path.join(base_dir, "repo")
    nightly = borgmatic_config(base_dir, repo, os.path.join(work, "patterns"))
    hourly = hourly_config(base_dir, repo, work)
    init_repo(nightly)
    before = snapshot(sb)

    # the hourly run after the dead nightly: Cyrus runs again, the run says why
    kill_nightly(sb, bc, work)
    r = borgmatic(hourly, "create", bc_config=bc, check=False)
    out = r.stdout + r.stderr
    assert sb.running(), out
    assert r.returncode == 0 and "cleaning up after an earlier run that did not finish" in out, out
    assert "Cyrus stopped by borg-cyrus (STILL STOPPED)" in out, out
    assert not os.path.exists(os.path.join(work, "state.json"))
    assert snapshot(sb) == before
    # doctor says what happened, until a backup completes again
    d = cli("doctor", config=bc)
    assert d.returncode == 1, d.stdout + d.stderr
    (line,) = [ln for ln in d.stdout.splitlines() if "ended without `after`" in ln]
    assert "mode stop-master" in line and "STILL STOPPED" in line and "before --dumps-only" in line, line

    # a nightly that completes: nothing left to report
    borgmatic(nightly, "create", bc_config=bc)
    night = latest_archive(repo)
    assert sb.running()
    d = cli("doctor", config=bc)
    assert d.returncode == 0 and "ended without `after`" not in d.stdout, d.stdout + d.stderr

    # a restore after a dead nightly: Cyrus runs again, then the restore does its work
    kill_nightly(sb, bc, work)
    r = cli("restore", "mailbox", "user/alice/Sent", "--into", "user/alice/Back", "--archive", night,
            "--borgmatic-config", nightly, config=bc)  # fmt: skip
    assert r.returncode == 0 and sb.running(), r.stdout + r.stderr
    assert "cleaning up after an earlier run that did not finish" in r.stderr
    assert subjects(sb, "alice", "INBOX/Back") == subjects(sb, "alice", "INBOX/Sent") != []
    d = cli("doctor", config=bc)
    assert d.returncode == 1 and "`borg-cyrus restore`" in d.stdout and "ended without `after`" in d.stdout, d.stdout
