"""The one borg process a partial restore reads an archive with
(restore/onepass.py), with real Cyrus, borg and borgmatic: the archive holds
the dump first and the partitions last; `restore user` reads the dump and the
user's paths without any other borg run and comes back identical over IMAP;
an archive in another order, a borg that is not the installed one (borg's
command line), an encrypted repository reached through `borg serve` (ssh);
SIGTERM to the restore's process group while borg walks the archive."""

import os
import signal
import subprocess
import sys
import time

import pytest

from borg_cyrus.cyrus import imapview
from support.common import cli, env, wait_for, write_config
from support.helpers import borgmatic, expected, snapshot
from support.restore_helpers import backup, delete_user, restore

pytestmark = pytest.mark.slow

VENV_BORG = os.path.join(os.path.dirname(sys.executable), "borg")


def _order(repo, archive=None):
    """The archive's item paths in borg's order."""
    loc = f"{repo}::{archive}" if archive else repo
    if archive is None:
        names = subprocess.run(["borg", "list", "--short", repo], capture_output=True, text=True, env=env(), check=True)
        loc = f"{repo}::{names.stdout.split()[-1]}"
    out = subprocess.run(["borg", "list", "--format", "{path}{NUL}", loc], capture_output=True, env=env(), check=True)
    return ["/" + p for p in out.stdout.decode().split("\0") if p]


def _same_alice(before, b, sb):
    want = expected(before, b["manifest"])
    have = snapshot(sb)
    diffs = [d for d in imapview.diff(want, have) if "alice" in d]
    assert diffs == [], "\n".join(diffs)


def _borg_lines(stderr):
    """borg command lines the restore ran through borg's CLI, and one-pass lines."""
    cli_runs = [ln for ln in stderr.splitlines() if "running " in ln and ("borg extract" in ln or " extract " in ln)]
    cli_runs += [ln for ln in stderr.splitlines() if "running " in ln and " list " in ln]
    one = [ln for ln in stderr.splitlines() if "borg (one pass):" in ln]
    return cli_runs, one


def test_user_restore_reads_the_archive_in_one_borg_process(populated, base_dir):
    sb = populated
    # item metadata of more than one chunk (borg ends a walk between chunks): files in configdirectory
    filler = os.path.join(sb.confdir, "filler with a long name to make the items bigger")
    os.makedirs(filler)
    for i in range(4000):
        open(os.path.join(filler, f"{i:06d}-{'x' * 60}"), "w").close()
    before = snapshot(sb)
    b = backup(sb, base_dir)
    order = _order(b["repo"])
    lay = b["manifest"]["layout"]
    dump = os.path.join(b["work"], "dump")
    ours = [p for p in order if not p.startswith("/borgmatic") and p != b["bm"]]  # borgmatic's own, first
    assert ours[0] == dump, ours[:3]  # the dump's root first ...
    parts = tuple(v.rstrip("/") + "/" for v in lay["partitions"].values())
    first_spool = next(i for i, p in enumerate(ours) if (p + "/").startswith(parts))
    rest = [p for p in ours[first_spool:] if not (p + "/").startswith(parts)]
    assert rest == [], "... and the partitions last"

    delete_user(sb, "alice")
    r = cli("-v", "restore", "user", "alice", "--borgmatic-config", b["bm"], config=b["bc"], check=0)
    _same_alice(before, b, sb)
    cli_runs, one = _borg_lines(r.stderr)
    assert cli_runs == [], cli_runs  # no `borg list`, no `borg extract`
    walks = [ln for ln in one if " path(s) from archive " in ln]
    assert len(walks) == 2 and "stopped where they end" in walks[0], one  # the dump: a few item chunks

    # an archive whose dump comes last (an older borg-cyrus): the same restore, whole walks
    with open(os.path.join(b["work"], "patterns")) as f:
        lines = f.read().splitlines()
    dump_line = next(ln for ln in lines if ln.startswith("R ") and ln.endswith("/dump"))
    reordered = [ln for ln in lines if ln != dump_line] + [dump_line]
    old = os.path.join(base_dir, "old.pat")
    with open(old, "w") as f:
        f.write("\n".join(reordered) + "\n")
    subprocess.run(
        ["borg", "create", "--patterns-from", old, f"{b['repo']}::old-order"],
        env=env(),
        check=True,
        capture_output=True,
    )
    assert _order(b["repo"], "old-order")[-1].startswith(dump)
    delete_user(sb, "alice")
    r = cli(
        "-v",
        "restore",
        "user",
        "alice",
        "--archive",
        "old-order",
        "--borgmatic-config",
        b["bm"],
        config=b["bc"],
        check=0,
    )
    _same_alice(before, b, sb)
    assert "a whole walk" in r.stderr


def test_a_borg_other_than_the_installed_one_runs_borg_s_command_line(populated, base_dir):
    sb = populated
    before = snapshot(sb)
    b = backup(sb, base_dir)
    wrapper = os.path.join(base_dir, "borg-wrapper")
    with open(wrapper, "w") as f:
        f.write(f'#!/bin/sh\nexec {VENV_BORG} "$@"\n')
    os.chmod(wrapper, 0o755)
    import yaml

    with open(b["bm"]) as f:
        cfg = yaml.safe_load(f)
    cfg["local_path"] = wrapper
    bm = write_config(os.path.join(base_dir, "borgmatic-wrapper.yaml"), cfg)
    delete_user(sb, "alice")
    r = cli("-v", "restore", "user", "alice", "--borgmatic-config", bm, config=b["bc"], check=0)
    _same_alice(before, b, sb)
    cli_runs, one = _borg_lines(r.stderr)
    assert one == [] and any(wrapper in ln for ln in cli_runs), r.stderr[-2000:]


def test_encrypted_repository_through_borg_serve(populated, base_dir):
    """ssh:// with a stand-in for ssh that runs `borg serve` here (borg's
    RemoteRepository, its RPC and preloading for real; no sshd), repokey
    encryption with the passphrase in borgmatic's configuration (handed to
    borg through a pipe)."""
    sb = populated
    before = snapshot(sb)
    fake_ssh = os.path.join(base_dir, "fake-ssh")
    with open(fake_ssh, "w") as f:
        f.write('#!/bin/sh\n# ssh HOST COMMAND...: run COMMAND here\nshift\nexec "$@"\n')
    os.chmod(fake_ssh, 0o755)
    repo_dir = os.path.join(base_dir, "remote-repo")
    b = backup(sb, base_dir)  # the local one, for the configs and the manifest
    import yaml

    with open(b["bm"]) as f:
        cfg = yaml.safe_load(f)
    cfg["repositories"] = [{"path": f"ssh://localhost{repo_dir}", "label": "remote"}]
    cfg["ssh_command"] = fake_ssh
    cfg["remote_path"] = VENV_BORG
    cfg["encryption_passphrase"] = "pass wörd 3 a.m."
    bm = write_config(os.path.join(base_dir, "borgmatic-remote.yaml"), cfg)
    borgmatic(bm, "repo-create", "--encryption", "repokey")
    borgmatic(bm, "create", bc_config=b["bc"])
    delete_user(sb, "alice")
    r = cli("-v", "restore", "user", "alice", "--borgmatic-config", bm, config=b["bc"], check=0)
    _same_alice(before, b, sb)
    cli_runs, one = _borg_lines(r.stderr)
    assert cli_runs == [] and one, r.stderr[-2000:]
    assert "pass wörd" not in r.stderr + r.stdout
    # a wrong passphrase: one clear error, nothing restored
    cfg["encryption_passphrase"] = "wrong"
    bad = write_config(os.path.join(base_dir, "borgmatic-bad.yaml"), cfg)
    delete_user(sb, "alice")
    r = cli("restore", "user", "alice", "--borgmatic-config", bad, config=b["bc"], check=1)
    assert "passphrase" in r.stderr.lower(), r.stderr
    assert not [n for n in snapshot(sb)["alice"]["mailboxes"] if n.startswith("INBOX")]


def _helpers():
    out = []
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    if b"borg_cyrus.restore.onepass" in f.read():
                        out.append(int(pid))
            except OSError:
                pass
    return out


def test_sigterm_to_the_process_group_during_the_walk(populated, base_dir):
    sb = populated
    b = backup(sb, base_dir)
    delete_user(sb, "alice")
    mark = os.path.join(base_dir, "walk.mark")
    e = env({"BORG_CYRUS_FAULT": "restore-walk:PAUSE", "BORG_CYRUS_FAULT_MARK": mark})
    argv = [
        sys.executable,
        "-m",
        "borg_cyrus",
        "-c",
        b["bc"],
        "restore",
        "user",
        "alice",
        "--borgmatic-config",
        b["bm"],
    ]
    proc = subprocess.Popen(argv, env=e, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    assert wait_for(lambda: os.path.exists(mark), 60), proc.communicate(timeout=30)
    assert _helpers(), "the borg helper is walking the archive"
    t = time.monotonic()
    os.killpg(proc.pid, signal.SIGTERM)  # as systemd stops a unit (the helper has a group of its own)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode != 0, (out, err)
    assert time.monotonic() - t < 15
    assert wait_for(lambda: not _helpers(), 10), "no borg helper is left behind"
    # nothing of alice came back, and the staging directory is gone
    assert not [n for n in snapshot(sb)["alice"]["mailboxes"] if n.startswith("INBOX")]
    staging = os.path.join(b["work"], "staging")
    assert not os.path.isdir(staging) or not os.listdir(staging)
    # and the restore works afterwards
    restore(b, "user", "alice")
    assert [n for n in snapshot(sb)["alice"]["mailboxes"] if n.startswith("INBOX")]
