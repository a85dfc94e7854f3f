"""Bad data and hangs fail loudly or are named, never silently: a FIFO where a
cyrus.index should be, a truncated cyrus.index, a truncated mailboxes.db, a
tool that hangs past run_timeout, two borgmatic runs at once."""

import json
import os
import shutil
import subprocess
import time

import pytest

from borg_cyrus.cyrus import storage
from borg_cyrus.cyrus.layout import discover
from support.common import cli, env, sandbox_config, tools_with, write_config
from support.helpers import borgmatic, borgmatic_config, init_repo, latest_archive, load_manifest, read_yaml
from support.restore_helpers import _boxes_by_name

pytestmark = pytest.mark.needs_root


def index_of(sb, intname):
    lay = storage.PathLayout.from_layout(discover(sb.imapd_conf))
    return os.path.join(storage.index_dir(lay, _boxes_by_name(sb)[intname]), "cyrus.index")


@pytest.mark.slow
def test_fifo_cyrus_index_does_not_hang_the_backup(populated, base_dir):
    """stop-master through borgmatic: the backup ends quickly, Cyrus runs again,
    and the mailbox is named."""
    sb = populated
    ix = index_of(sb, "user.bob")
    shutil.move(ix, ix + ".aside")
    os.mkfifo(ix, 0o600)
    os.chown(ix, sb.uid, sb.gid)
    bc = sandbox_config(sb, base_dir, mode="stop-master", run_timeout=60)
    cfg = borgmatic_config(base_dir, os.path.join(base_dir, "repo"), os.path.join(base_dir, "work", "patterns"))
    init_repo(cfg)
    t0 = time.monotonic()
    r = subprocess.run(
        ["borgmatic", "-c", cfg, "create", "--verbosity", "1"],
        capture_output=True,
        text=True,
        env=env({"BORG_CYRUS_CONFIG": bc}),
        timeout=120,
    )
    took = time.monotonic() - t0
    out = r.stdout + r.stderr
    assert r.returncode == 0, out
    assert took < 30, f"{took:.1f} s"
    assert sb.running()
    assert "user/bob: cyrus.index is a FIFO, not a regular file (not read)" in out, out
    rep = load_manifest(os.path.join(base_dir, "work"))["consistency"]
    assert rep["damaged_indexes"] == {"user.bob": "cyrus.index is a FIFO, not a regular file (not read)"}
    os.unlink(ix)
    shutil.move(ix + ".aside", ix)


def test_truncated_cyrus_index_is_a_warning_naming_the_mailbox(populated, base_dir):
    sb = populated
    ix = index_of(sb, "user.alice.Sent")
    size = os.path.getsize(ix)
    with open(ix, "r+b") as f:
        f.truncate(size - 50)  # mid-record
    cfg = sandbox_config(sb, base_dir)
    r = cli("before", config=cfg, check=0)
    cli("after", config=cfg, check=0)
    lines = [ln for ln in r.stderr.splitlines() if "damaged or unreadable cyrus.index" in ln]
    assert len(lines) == 1 and "user/alice/Sent: cyrus.index is truncated" in lines[0], r.stderr
    m = load_manifest(os.path.join(base_dir, "work"))
    assert m["consistency"]["damaged_indexes"]["user.alice.Sent"].startswith("cyrus.index is truncated (")
    assert m["mailboxes"]["user.alice.Sent"]["problem"].startswith("cyrus.index is truncated")


def test_truncated_mailboxes_db_fails_the_backup(populated, base_dir):
    """mailboxes.db cut to half its size still opens and lists fewer mailboxes:
    the spool holds mailboxes it does not list, so the backup fails (live mode:
    a documented switch lets it go on with a warning)."""
    sb = populated
    sb.stop()
    db = os.path.join(sb.confdir, "mailboxes.db")
    with open(db, "r+b") as f:
        f.truncate(os.path.getsize(db) // 2)
    cfg = sandbox_config(sb, base_dir)
    r = cli("before", config=cfg)
    assert r.returncode == 1
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("borg-cyrus: error:")]
    assert len(errors) == 1 and "mailboxes.db looks damaged or truncated" in errors[0], r.stderr
    assert "warn-in-live" in errors[0]
    work = os.path.join(base_dir, "work")
    assert not os.path.exists(os.path.join(work, "dump")) and not os.path.exists(os.path.join(work, "patterns"))
    assert not os.path.exists(os.path.join(work, "state.json"))
    cfg = sandbox_config(sb, base_dir, consistency={"unlisted_mailboxes": "warn-in-live"})
    r = cli("before", config=cfg, check=0)
    assert "mailboxes.db looks damaged or truncated" in r.stderr and "warning" in r.stderr
    cli("after", config=cfg, check=0)
    m = load_manifest(work)
    assert m["consistency"]["unlisted_mailboxes"] and any("mailboxes.db" in p for p in m["problems"])
    # stop-master is never downgraded
    cfg = sandbox_config(sb, base_dir, mode="stop-master", consistency={"unlisted_mailboxes": "warn-in-live"})
    assert cli("before", config=cfg).returncode == 1


def test_run_timeout_ends_a_hung_before_and_starts_cyrus(populated, base_dir):
    """A Cyrus tool that hangs (a wrapper that sleeps: a real tool cannot be
    made to hang on demand) with a generous tool_timeout: run_timeout ends
    `before`, Cyrus runs again."""
    sb = populated
    tools = tools_with(os.path.join(base_dir, "tools"), "cyr_dbtool", "sleep 600")
    cfg = sandbox_config(sb, base_dir, mode="stop-master", cyrus_tools_directory=tools, run_timeout=3)
    t0 = time.monotonic()
    r = cli("before", config=cfg)
    assert time.monotonic() - t0 < 20
    assert r.returncode == 1 and "before did not finish within 3 s (run_timeout)" in r.stderr, r.stderr
    assert sb.running()
    assert not os.path.exists(os.path.join(base_dir, "work", "state.json"))


@pytest.mark.slow
def test_two_borgmatic_runs_at_once_the_second_is_an_error(populated, base_dir):
    sb = populated
    bc = sandbox_config(sb, base_dir, mode="stop-master", busy={"wait": 1})
    repo = os.path.join(base_dir, "repo")
    first_cfg = borgmatic_config(base_dir, repo, os.path.join(base_dir, "work", "patterns"))
    init_repo(first_cfg)
    slow = read_yaml(first_cfg)
    slow["commands"].insert(1, {"before": "action", "when": ["create"], "run": ["sleep 8"]})
    slow_cfg = write_config(os.path.join(base_dir, "borgmatic-slow.yaml"), slow)
    first = subprocess.Popen(
        ["borgmatic", "-c", slow_cfg, "create"],
        env=env({"BORG_CYRUS_CONFIG": bc}),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    state = os.path.join(base_dir, "work", "state.json")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not (
        os.path.exists(state) and json.load(open(state)).get("phase") == "ready"
    ):
        time.sleep(0.1)
    r = borgmatic(first_cfg, "create", bc_config=bc, check=False)
    out, _ = first.communicate(timeout=120)
    assert first.returncode == 0, out
    assert r.returncode != 0, "borgmatic reported the skipped second run as a success"
    assert "is still running after waiting 1 s" in r.stdout + r.stderr
    archives = json.loads(
        subprocess.run(["borg", "list", "--json", repo], capture_output=True, text=True, env=env(), check=True).stdout
    )["archives"]
    assert len(archives) == 1 and archives[0]["name"] == latest_archive(repo)
    assert sb.running() and not os.path.exists(state)


def test_hung_before_in_stop_master_cyrus_started_at_run_timeout(populated, base_dir):
    """`before` hangs where no signal reaches it (SIGSTOP stands in for a
    process stuck on a dead network filesystem) while Cyrus is stopped: the
    dead-man switch starts Cyrus at run_timeout. (A dump tool that sleeps keeps
    `before` busy long enough to be stopped; the hang and the restart are real.)"""
    import signal
    import sys

    sb = populated
    tools = tools_with(
        os.path.join(base_dir, "tools"), "ctl_mboxlist", 'sleep 30\nexec /usr/lib/cyrus/bin/ctl_mboxlist "$@"'
    )
    cfg = sandbox_config(sb, base_dir, mode="stop-master", cyrus_tools_directory=tools, run_timeout=4)
    p = subprocess.Popen(
        [sys.executable, "-m", "borg_cyrus", "-c", cfg, "before"],
        env=env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 20
        while sb.running() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not sb.running()
        p.send_signal(signal.SIGSTOP)
        t0 = time.monotonic()
        deadline = time.monotonic() + 15
        while not sb.running() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert sb.running(), "nothing started Cyrus while `before` hung"
        assert time.monotonic() - t0 < 8
        logfile = os.path.join(base_dir, "work", "watchdog.log")
        while not os.path.exists(logfile) and time.monotonic() < deadline:
            time.sleep(0.05)
        log = open(logfile).read()
        assert "`before` did not finish within run_timeout" in log and "started Cyrus" in log
    finally:
        p.kill()
        p.wait()
    cli("after", config=cfg, check=0)
    assert sb.running() and cli("doctor", config=cfg).returncode == 0
