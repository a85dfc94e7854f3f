"""`borg-cyrus pre-upgrade`: borgmatic create with the hourly (dumps-only)
configuration under a `{hostname}-pre-upgrade-…` archive name; one clear
line and a non-zero exit when it cannot make that archive. Real Cyrus, borg
and borgmatic."""

import json
import os
import re
import signal
import subprocess
import time

import pytest

from support.common import cli, env, sandbox_config, wait_for
from support.helpers import init_repo
from test_hourly import archives, hourly_config

pytestmark = pytest.mark.needs_root


def test_missing_borgmatic_config_is_one_line_and_changes_nothing(sandbox, base_dir):
    bc = sandbox_config(sandbox, base_dir)
    before = sorted(os.listdir(base_dir))
    r = cli("pre-upgrade", "--borgmatic-config", os.path.join(base_dir, "nope.yaml"), config=bc)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "nope.yaml does not exist" in lines[0] and lines[0].startswith("borg-cyrus: error:")
    assert sorted(os.listdir(base_dir)) == before  # no work directory, no dump, no repository


@pytest.mark.slow
def test_pre_upgrade_archive_and_a_failing_one(sandbox, base_dir):
    a = sandbox.imap()
    assert a.create("user/alice")[0] == "OK"
    a.logout()
    bc = sandbox_config(sandbox, base_dir)
    repo = os.path.join(base_dir, "repo")
    hourly = hourly_config(base_dir, repo, os.path.join(base_dir, "work"))
    init_repo(hourly)
    r = cli("pre-upgrade", "--borgmatic-config", hourly, "--reason", "cyrus-imapd 3.6.1-4 -> 3.6.1-5", config=bc)
    assert r.returncode == 0, r.stderr
    assert "pre-upgrade: database backup " in r.stderr and "-pre-upgrade-" in r.stderr
    (name,) = archives(repo, "*")
    info = subprocess.run(
        ["borg", "info", "--json", f"{repo}::{name}"], capture_output=True, text=True, check=True, env=env()
    )
    (archive,) = json.loads(info.stdout)["archives"]
    assert "-pre-upgrade-" in archive["name"]
    assert archive["comment"] == "borg-cyrus pre-upgrade: cyrus-imapd 3.6.1-4 -> 3.6.1-5"
    paths = subprocess.run(
        ["borg", "list", "--format", "{path}{NL}", f"{repo}::{archive['name']}"],
        capture_output=True,
        text=True,
        check=True,
        env=env(),
    ).stdout.split()
    assert any(p.endswith("dump/manifest.json") for p in paths)
    assert not any("/spool-" in p for p in paths)  # databases only

    # a real failure: the repository is gone
    os.rename(repo, repo + ".moved")
    r = cli("pre-upgrade", "--borgmatic-config", hourly, config=bc)
    assert r.returncode == 1
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert "pre-upgrade: no database backup" in lines[0] and "does not exist" in lines[0]


def test_pre_upgrade_gives_up_in_time_when_a_run_holds_the_lock(sandbox, base_dir):
    """borg-cyrus's lock really held by a stuck process (flock(1)): pre-upgrade
    waits at most half its --timeout and names the holder, where the hook's
    `before --dumps-only` would wait busy.wait (600 s) first. The default
    deadline is a few minutes."""
    bc = sandbox_config(sandbox, base_dir)
    work = os.path.join(base_dir, "work")
    os.makedirs(work, 0o711)
    repo = os.path.join(base_dir, "repo")
    hourly = hourly_config(base_dir, repo, work)  # the repository is never reached
    lock = os.path.join(work, "lock")
    holder = subprocess.Popen(["flock", lock, "sleep", "120"], start_new_session=True)
    try:
        assert wait_for(lambda: os.path.exists(lock), 10)
        t0 = time.monotonic()
        r = cli("pre-upgrade", "--borgmatic-config", hourly, "--timeout", "6", config=bc)
        took = time.monotonic() - t0
    finally:  # flock and the sleep that inherited the lock
        os.killpg(holder.pid, signal.SIGKILL)
        holder.wait()
    assert r.returncode == 1 and took < 20, (took, r.stderr)
    lines = [ln for ln in r.stderr.strip().splitlines() if "error" in ln]
    assert len(lines) == 1 and f"another borg-cyrus command holds {lock}" in lines[0], r.stderr
    assert "did not end within 3 s" in lines[0], lines[0]
    helptext = cli("pre-upgrade", "--help", check=0).stdout
    default = float(re.search(r"locks included \((\d+)\)", " ".join(helptext.split())).group(1))
    assert 60 <= default <= 300, default
