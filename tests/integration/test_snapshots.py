"""Snapshot modes for real: btrfs and XFS (+ fsfreeze, through mode `command`)
on loop devices, and rsync-staging, each backing up a real Cyrus through
borgmatic. LVM and ZFS run the same checks inside the VM (tests/vm/)."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from borg_cyrus.cyrus import imapview
from borg_cyrus.providers import mounts
from borg_cyrus.tools.demo import populate
from borg_cyrus.cyrus.imapview import quote
from borg_cyrus.cyrus.sandbox import Sandbox
from support.common import cli, wait_for, write_config
from support.setups import Setup
from support.fsimages import is_frozen, sh
from support.helpers import (
    archive_paths,
    borgmatic,
    borgmatic_config,
    expected,
    extract,
    init_repo,
    load_manifest,
    snapshot,
)

pytestmark = [pytest.mark.needs_root]

IN_VM = os.environ.get("VMH_GUEST") == "1"
HOST_PROVIDERS = ["btrfs", "command-xfs", "rsync-staging"]
VM_PROVIDERS = ["lvm-xfs", "zfs"]  # run inside the VM harness by tests/vm/test_vm_snapshots.py
PROVIDERS = [pytest.param(p, marks=pytest.mark.skipif(IN_VM, reason="host provider")) for p in HOST_PROVIDERS] + [
    pytest.param(p, marks=pytest.mark.skipif(not IN_VM, reason="needs the VM (device-mapper / zfs.ko)"))
    for p in VM_PROVIDERS
]
LIVE = pytest.param("live", marks=pytest.mark.skipif(IN_VM, reason="host only"))
FIFO = "0sync"


@pytest.fixture(params=PROVIDERS + [pytest.param("btrfs-2fs", marks=pytest.mark.skipif(IN_VM, reason="host"))])
def setup_multi(request, base_dir):
    s = Setup(base_dir, request.param)
    yield s
    s.destroy()


@pytest.mark.slow
def test_backup_through_snapshot_restores_identically(setup_multi):
    s = setup_multi
    sb = s.sb.create()
    populate(sb)
    bc = s.config()
    repo = os.path.join(s.base, "repo")
    cfg = borgmatic_config(s.base, repo, os.path.join(s.work, "patterns"))
    init_repo(cfg)
    before = snapshot(sb)

    r = borgmatic(cfg, "create", "--verbosity", "1", bc_config=bc)
    out = r.stdout + r.stderr
    assert "write-blocked window" in out, out
    manifest = load_manifest(s.work)
    assert manifest["blocked_seconds"] is not None and manifest["blocked_seconds"] < 5
    assert s.leftovers() == []
    paths = archive_paths(repo)
    assert f"{s.data}/conf/mailboxes.db" in paths and s.layout["partition-second"] in paths
    volumes = 2 if s.provider == "btrfs-2fs" else 1
    if s.provider != "rsync-staging":
        assert f"snapshots of {volumes} volume(s)" in manifest["view"], manifest["view"]
    assert not any("/snapshots/" in p or "/staging/" in p for p in paths)
    assert f"{s.data}/conf/deliver.db" not in paths
    # the mailbox list in the archive was dumped from the frozen view
    assert manifest["counts"]["mailboxes"] == 14 and manifest["counts"]["messages"] >= 20

    # unchanged spool, second run: Borg's files cache recognises the files (stable path)
    with open(cfg) as f:
        text = f.read()
    with open(cfg, "w") as f:
        f.write(text + 'extra_borg_options:\n  create: "--list --filter=AMEU"\n')
    r = borgmatic(cfg, "create", "--verbosity", "1", bc_config=bc)
    out = r.stdout + r.stderr
    spool_lines = [ln for ln in out.splitlines() if f"{s.data}/spool-default/uuid/" in ln and ln.rstrip().endswith(".")]
    unchanged = [ln for ln in spool_lines if "U " in ln or '"status": "U"' in ln]
    assert spool_lines and len(unchanged) >= len(spool_lines) - 1, "\n".join(spool_lines[:20])
    assert s.leftovers() == []

    s.wipe()
    extract(repo)
    cli("restore", "full", config=bc, check=0)
    sb.start()
    assert imapview.diff(expected(before, manifest), snapshot(sb)) == []


PLUGIN = textwrap.dedent('''
    import imaplib, os
    from borg_cyrus.hookspecs import hookimpl

    @hookimpl
    def view_ready(ctx, view):
        import time
        for _ in range(100):   # Cyrus may have just been started again (stop-master quiesce)
            try:
                c = imaplib.IMAP4("127.0.0.1", int(os.environ["BCT_IMAP_PORT"]))
                break
            except ConnectionRefusedError:
                time.sleep(0.05)
        c.login("cyrus", "x")
        c.create("user/alice/after-snapshot")
        c.logout()
''')


@pytest.mark.parametrize("provider", [LIVE] + PROVIDERS)
def test_dumps_describe_the_snapshot_instant(provider, base_dir, tmp_path):
    """A mailbox created right after the view is frozen is not in the dump;
    one created just before is (in live mode the dump sees both)."""
    s = Setup(base_dir, "rsync-staging" if provider == "live" else provider)
    try:
        sb = s.sb.create().start()
        c = sb.imap()
        c.create("user/alice")
        c.create("user/alice/before-snapshot")
        c.logout()
        (tmp_path / "bct_instant.py").write_text(PLUGIN)
        info = tmp_path / "bct_instant-1.0.dist-info"
        info.mkdir()
        (info / "METADATA").write_text("Metadata-Version: 2.1\nName: bct-instant\nVersion: 1.0\n")
        (info / "entry_points.txt").write_text("[borg_cyrus]\ninstant = bct_instant\n")
        bc = s.config(**({"mode": "live"} if provider == "live" else {}))
        cli("before", config=bc, check=0, extra_env={"PYTHONPATH": str(tmp_path), "BCT_IMAP_PORT": str(sb.port)})
        cli("after", config=bc, check=0)
        names = json.load(open(os.path.join(s.work, "dump", "manifest.json")))["mailboxes"]
        dumped = open(os.path.join(s.work, "dump", "mailboxes.json")).read()
        assert "user.alice.before-snapshot" in dumped and "user.alice.before-snapshot" in names
        if provider == "live":
            assert "user.alice.after-snapshot" in dumped
        else:
            assert "user.alice.after-snapshot" not in dumped
        c = sb.imap()
        assert c.list('""', "user/alice/after-snapshot")[1][0]  # it does exist on the server
        c.logout()
    finally:
        s.destroy()


@pytest.mark.slow
@pytest.mark.parametrize("provider", [LIVE] + PROVIDERS)
def test_message_moved_during_backup(provider, base_dir):
    """The seed's failure mode: a message moved from a folder not yet read into
    one already read is lost by a live backup, and kept exactly once through a
    snapshot. Borg is held between the two folders by a FIFO it reads
    (--read-special), so the move happens at exactly that moment."""
    s = Setup(base_dir, "rsync-staging", tmpfs=True) if provider == "live" else Setup(base_dir, provider)
    try:
        sb = s.sb.create()
        os.makedirs(sb.partitions["second"], exist_ok=True)
        os.mkfifo(os.path.join(sb.partitions["second"], FIFO))  # first entry borg meets in partition second
        populate(sb)
        if provider == "live":
            with os.scandir(sb.partitions["second"]) as it:
                first = min(it, key=lambda e: e.inode()).name
            assert first == FIFO, (
                f"borg would read {first} before the FIFO: the test cannot hold it between the folders"
            )
        bo = sb.imap("bob")
        bo.select(quote("INBOX/Archive 2019"))
        typ, data = bo.uid("FETCH", "1", "(BODY.PEEK[])")
        moved_body = data[0][1]
        bo.close()
        bo.logout()
        bc = s.config(**({"mode": "live"} if provider == "live" else {}))
        repo = os.path.join(s.base, "repo")
        cfg = borgmatic_config(s.base, repo, os.path.join(s.work, "patterns"))
        with open(cfg, "a") as f:
            f.write("read_special: true\n")
        init_repo(cfg)

        result = {}

        def run():
            result["r"] = borgmatic(cfg, "create", bc_config=bc, check=False)

        t = threading.Thread(target=run)
        t.start()
        fifo_path = os.path.join(sb.partitions["second"], FIFO)
        if provider != "live":
            fifo_path = s.read_root() + fifo_path
        deadline = time.time() + 60
        while not os.path.exists(fifo_path) and time.time() < deadline:
            time.sleep(0.05)
        with open(fifo_path, "wb") as f:  # returns once borg opened it: default partition is done
            bo = sb.imap("bob")
            bo.select(quote("INBOX/Archive 2019"))
            assert bo.uid("MOVE", "1", "INBOX")[0] == "OK"
            bo.close()
            bo.logout()
            f.write(b"x")
        t.join(120)
        assert result["r"].returncode == 0, result["r"].stdout + result["r"].stderr
        manifest = load_manifest(s.work)

        s.wipe()
        extract(repo)
        os.unlink(os.path.join(sb.partitions["second"], FIFO))
        cli("restore", "full", config=bc, check=0)
        sb.start()
        view = imapview.snapshot(sb, ["bob"])["bob"]["mailboxes"]
        import hashlib

        h = hashlib.sha256(moved_body).hexdigest()
        copies = sum(1 for box in view.values() for m in box.get("messages", {}).values() if m["sha256"] == h)
        if provider == "live":
            assert copies == 0, "a live backup loses the moved message (the failure mode the seed warns about)"
        else:
            assert copies == 1, f"{provider}: the moved message must be in the archive exactly once"
        assert manifest["mode"] == s.mode["mode"] if provider != "live" else "live"
    finally:
        s.destroy()


def _steps(work):
    try:
        return [st["kind"] for st in json.load(open(os.path.join(work, "state.json")))["steps"]]
    except (OSError, ValueError):
        return []


@pytest.mark.skipif(IN_VM, reason="host test")
@pytest.mark.parametrize("how", ["sigkill", "hang"])
@pytest.mark.parametrize("quiesce", ["fsfreeze", "stop-master"])
def test_dead_man_switch(base_dir, quiesce, how):
    """borg-cyrus killed (-9) or hung (SIGSTOP) inside the quiesce window: the
    watchdog thaws the filesystem / starts Cyrus (at once when the process
    dies, at the deadline when it hangs) and the next run is clean. The slow
    `create` command (sleep) only widens the window; freeze, kill, thaw and
    restart are real."""
    s = Setup(base_dir, "command-xfs")
    try:
        sb = s.sb.create().start()
        sb.imap().create("user/alice")
        deadline = 3
        slow = dict(s.mode["command_snapshot"], create=["sleep", "60"])
        bc = s.config(command_snapshot=slow, snapshot={"quiesce": quiesce, "deadline": deadline})
        t_start = time.time()
        p = subprocess.Popen(
            [sys.executable, "-m", "borg_cyrus", "-c", bc, "before"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        marker = "fs-frozen" if quiesce == "fsfreeze" else "service-stopped"
        assert wait_for(lambda: marker in _steps(s.work) and "snapshot" in _steps(s.work), 30), _steps(s.work)
        if quiesce == "fsfreeze":
            assert is_frozen(s.mnt)
        else:
            assert not sb.running()
        t0 = time.time()
        p.send_signal(signal.SIGKILL if how == "sigkill" else signal.SIGSTOP)
        if quiesce == "fsfreeze":
            ok = wait_for(lambda: not is_frozen(s.mnt, 0.2), deadline + 5)
        else:
            ok = wait_for(sb.running, deadline + 10)
        took = time.time() - t0
        assert ok, "the watchdog did not undo the quiesce"
        if how == "sigkill":
            assert took < deadline, f"thaw took {took:.1f} s after the process died"
        else:  # the hung process is alive: only the deadline (counted from the freeze) ends the window
            assert time.time() - t_start >= deadline, f"acted {took:.1f} s after the hang, before the deadline"
        p.kill()
        p.wait()
        # the next run cleans up what the dead one left and succeeds
        bc = s.config(snapshot={"quiesce": quiesce, "deadline": deadline})
        r = cli("before", config=bc, check=0)
        assert "cleaning up after an earlier run" in r.stderr
        cli("after", config=bc, check=0)
        assert s.leftovers() == [] and sb.running()
        assert "watchdog fired" in open(os.path.join(s.work, "watchdog.log")).read()
    finally:
        s.destroy()


@pytest.mark.skipif(not IN_VM, reason="needs the VM (device-mapper)")
def test_lvm_snapshot_overflow_fails_the_backup(base_dir):
    """A snapshot that overflows while borg reads it becomes invalid: `after`
    must fail loudly (and still tear everything down)."""
    s = Setup(base_dir, "lvm-xfs")
    try:
        sb = s.sb.create().start()
        sb.imap().create("user/alice")
        bc = s.config(lvm={"snapshot_size": "8M"})
        cli("before", config=bc, check=0)
        # heavy writes to the origin while "borg" would be reading the snapshot
        subprocess.run(
            ["dd", "if=/dev/urandom", f"of={s.data}/filler", "bs=1M", "count=48", "conv=fsync"],
            check=True,
            capture_output=True,
        )
        r = cli("after", config=bc)
        assert r.returncode == 1
        assert "must not be trusted" in r.stderr and ("overflowed" in r.stderr or "invalid" in r.stderr), r.stderr
        assert s.leftovers() == []
        assert sb.running()
    finally:
        s.destroy()


@pytest.mark.skipif(IN_VM, reason="host test")
def test_stale_cleanup_leaves_other_configurations_alone(base_dir):
    """Two configurations on one btrfs (two Cyrus servers, two work
    directories): B's `before` must not remove or unmount A's snapshot."""
    s = Setup(base_dir, "btrfs")
    try:
        a = s.sb.create().start()
        a.imap().create("user/alice")
        cfg_a = s.config()
        other = os.path.join(s.mnt, "other")
        sh("btrfs", "subvolume", "create", other)
        os.chmod(other, 0o755)
        b = Sandbox(
            os.path.join(base_dir, "cyrus-b"),
            layout={
                "configdirectory": f"{other}/conf",
                "partition-default": f"{other}/spool",
                "sievedir": f"{other}/sieve",
            },
        )
        b.create().start()
        b.imap().create("user/bob")
        cfg_b = write_config(
            os.path.join(base_dir, "b.yaml"),
            {
                "imapd_conf": b.imapd_conf,
                "work_directory": os.path.join(base_dir, "work-b"),
                "mode": "btrfs",
                "service": b.borg_cyrus_service(),
            },
        )
        cli("before", config=cfg_a, check=0)
        a_mount = os.path.join(s.work, "snapshots") + s.data
        assert os.path.exists(os.path.join(a_mount, "conf", "mailboxes.db"))
        opts = [m for m in mounts.mounts() if m.mountpoint == a_mount][0].options.split(",")
        assert {"ro", "nosuid", "nodev", "noexec"} <= set(opts), opts
        cli("before", config=cfg_b, check=0)
        assert os.path.exists(os.path.join(a_mount, "conf", "mailboxes.db")), "B removed A's snapshot"
        cli("after", config=cfg_b, check=0)
        cli("after", config=cfg_a, check=0)
        assert s.leftovers() == []
        b.stop()
    finally:
        s.destroy()
