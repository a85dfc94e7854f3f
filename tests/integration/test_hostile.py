"""Hostile and odd inputs: fuzzed parsers, awkward mailbox names end to end,
configs that try path traversal or injection, secrets, permissions."""

import json
import os
import stat
import subprocess
import time

import pytest

from borg_cyrus.cyrus import imapview, mboxlist
from borg_cyrus.cyrus.imapview import quote
from support.common import BASE, cli, sandbox_config, tools_with, write_config
from support.helpers import extract, wipe

# -- odd mailbox names end to end --------------------------------------------------

ODD = [
    "Ünïcödé ✓ 日本",
    "with  two spaces",
    "dot.in.name",
    "car^et",
    "-rf",
    "$(touch PWNED)",
    "; rm -rf ~",
    "`id`",
    "quote\"d",
    "back\\slash",
    "a*b?c[d]",
    "Junk",
]


@pytest.mark.needs_root
@pytest.mark.slow
def test_odd_mailbox_names_backup_and_restore(sandbox, base_dir):
    sb = sandbox
    a = sb.imap()
    assert a.create("user/alice")[0] == "OK"
    made = []
    for name in ODD:
        full = f"user/alice/{name}"
        if a.create(quote(full))[0] == "OK":
            made.append(full)
    a.logout()
    # Cyrus itself refuses a few (backquote, backslash, '~'); these must all exist
    for must in ("Ünïcödé ✓ 日本", "with  two spaces", "dot.in.name", "-rf", "$(touch PWNED)", "a*b?c[d]", "Junk"):
        assert f"user/alice/{must}" in made, made
    al = sb.imap("alice")
    for full in made:
        al.append(quote("INBOX" + full[len("user/alice") :]), None, None, f"Subject: {full}\r\n\r\nbody\r\n".encode())
    al.logout()
    excluded = ["user/alice/-rf", "user/alice/$(touch PWNED)", "user/alice/a*b?c[d]"]
    cfg = sandbox_config(sb, base_dir, exclude={"mailboxes": excluded})
    before = imapview.snapshot(sb, ["alice"])
    cli("before", config=cfg, check=0)
    repo = os.path.join(base_dir, "repo")
    from support.common import env as test_env

    env = test_env()
    subprocess.run(["borg", "init", "-e", "none", repo], check=True, env=env, capture_output=True)
    subprocess.run(
        ["borg", "create", "--patterns-from", os.path.join(base_dir, "work", "patterns"), f"{repo}::a"],
        check=True,
        env=env,
        capture_output=True,
    )
    cli("after", config=cfg, check=0)
    manifest = json.load(open(os.path.join(base_dir, "work", "dump", "manifest.json")))
    assert sorted(mboxlist.external_name(n) for n in manifest["excluded_mailboxes"]) == sorted(
        e for e in excluded if e in made
    )
    wipe(sb)
    subprocess.run(["rm", "-rf", os.path.join(base_dir, "work", "dump")], check=True)
    extract(repo, "a")
    cli("restore", "full", config=cfg, check=0)
    sb.start()
    after = imapview.snapshot(sb, ["alice"])
    for name, box in before["alice"]["mailboxes"].items():
        full = "user/alice" + name[5:] if name.startswith("INBOX") else name
        if full in excluded:
            box["messages"] = {}
    assert imapview.diff(before, after) == []
    assert not os.path.exists("PWNED") and not os.path.exists(os.path.join(base_dir, "PWNED"))


# -- hostile config values -------------------------------------------------------------


@pytest.mark.parametrize(
    "key,value",
    [
        ("imapd_conf", "/etc/imapd.conf; touch /tmp/PWNED"),
        ("work_directory", "/var/lib/../../tmp/evil"),
        ("work_directory", "relative/dir"),
        ("extra_paths", ["/etc/ssl\nR /"]),
        ("exclude", {"paths": ["/var/spool/../../etc"]}),
        ("snapshot", {"prefix": "x; rm -rf /"}),
        ("snapshot", {"mount_directory": "/mnt/../etc"}),
    ],
)
def test_hostile_config_values_refused(base_dir, key, value):
    cfg = write_config(
        os.path.join(base_dir, "c.yaml"),
        {key: value, "work_directory": os.path.join(BASE, "never")} if key != "work_directory" else {key: value},
    )
    r = cli("before", config=cfg)
    assert r.returncode == 2 and "borg-cyrus: error:" in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert not os.path.exists("/tmp/PWNED") and not os.path.exists(os.path.join(BASE, "never"))


def test_group_writable_config_refused(base_dir):
    cfg = write_config(os.path.join(base_dir, "c.yaml"), {})
    os.chown(cfg, 0, 8)  # group "mail"
    os.chmod(cfg, 0o660)
    r = cli("config", "validate", config=cfg)
    assert r.returncode == 2 and "writable by group" in r.stderr


# -- secrets and permissions --------------------------------------------------------------


@pytest.mark.needs_root
def test_no_secret_in_logs_state_or_dumps(populated, base_dir):
    secret = "s3cr3t-Passphrase-XYZ"
    cfg = sandbox_config(populated, base_dir, mode="stop-master")
    r1 = cli(
        "-vv",
        "before",
        config=cfg,
        check=0,
        extra_env={"BORG_PASSPHRASE": secret, "BORG_REPO": f"ssh://u:{secret}@h/r"},
    )
    state = open(os.path.join(base_dir, "work", "state.json")).read()
    r2 = cli("-vv", "after", config=cfg, check=0, extra_env={"BORG_PASSPHRASE": secret})
    blob = r1.stdout + r1.stderr + r2.stdout + r2.stderr + state
    for root, _, files in os.walk(os.path.join(base_dir, "work")):
        for f in files:
            p = os.path.join(root, f)
            if os.path.isfile(p):
                blob += open(p, "rb").read().decode("utf-8", "replace")
    assert secret not in blob


@pytest.mark.needs_root
def test_permissions_and_planted_symlinks(populated, base_dir):
    work = os.path.join(base_dir, "work")
    os.makedirs(work, 0o711)
    victim = os.path.join(base_dir, "victim")
    with open(victim, "w") as f:
        f.write("keep me\n")
    for name in ("patterns", "dump", "dump.new-1", "patterns.tmp-1"):
        os.symlink(victim, os.path.join(work, name))
    cfg = sandbox_config(populated, base_dir)
    cli("before", config=cfg, check=0)
    cli("after", config=cfg, check=0)
    assert open(victim).read() == "keep me\n"
    assert stat.S_IMODE(os.stat(work).st_mode) == 0o711
    dump = os.path.join(work, "dump")
    assert not os.path.islink(dump) and stat.S_IMODE(os.stat(dump).st_mode) == 0o700
    for f in os.listdir(dump):
        p = os.path.join(dump, f)
        if os.path.isfile(p):
            assert stat.S_IMODE(os.stat(p).st_mode) == 0o600, f
    assert not os.path.islink(os.path.join(work, "patterns"))
    assert stat.S_IMODE(os.stat(os.path.join(work, "patterns")).st_mode) == 0o600
    # a state file that is a symlink is not trusted
    os.symlink(victim, os.path.join(work, "state.json"))
    r = cli("before", config=cfg)
    assert r.returncode == 1 and "state file" in r.stderr
    assert open(victim).read() == "keep me\n"


@pytest.mark.needs_root
def test_work_directory_symlink_refused(populated, base_dir):
    real = os.path.join(base_dir, "elsewhere")
    os.makedirs(real)
    os.symlink(real, os.path.join(base_dir, "work"))
    r = cli("before", config=sandbox_config(populated, base_dir))
    assert r.returncode == 1 and "not a plain directory" in r.stderr
    assert os.listdir(real) == []


@pytest.mark.needs_root
def test_cyrus_tool_hang_times_out(populated, base_dir):
    """A Cyrus tool that hangs is killed after tool_timeout, with a clear line,
    and Cyrus (stopped by stop-master) is started again. The hang is a fake
    (a wrapper that sleeps): a real Cyrus tool cannot be made to hang on demand."""
    pidfile = os.path.join(base_dir, "hung.pid")
    tools = tools_with(os.path.join(base_dir, "tools"), "ctl_mboxlist", f"echo $$ > {pidfile}\nsleep 600")
    cfg = sandbox_config(populated, base_dir, mode="stop-master", tool_timeout=2, cyrus_tools_directory=tools)
    r = cli("before", config=cfg)
    assert r.returncode == 1
    assert "ctl_mboxlist did not finish within 2 s and was killed" in r.stderr
    assert populated.running()
    # the tool's whole process group (the script and its sleep) is gone
    pgid = int(open(pidfile).read())
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.05)
    else:
        pytest.fail(
            f"process group {pgid} of the hung tool survived: "
            + subprocess.run(["ps", "-o", "pid,stat,args", "-g", str(pgid)], capture_output=True, text=True).stdout
        )


@pytest.mark.needs_root
def test_dump_directory_full(populated, base_dir):
    """ENOSPC while dumping: one clear line, the previous dump stays valid,
    nothing half-written is kept."""
    from support.fsimages import LoopFs

    fs = LoopFs(f"full-{os.getpid()}", "ext4", size="16M").make(os.path.join(base_dir, "small"))
    try:
        work = os.path.join(base_dir, "small", "work")
        cfg = sandbox_config(populated, base_dir, work_directory=work)
        cli("before", config=cfg, check=0)
        cli("after", config=cfg, check=0)
        good = open(os.path.join(work, "dump", "manifest.json")).read()
        subprocess.run(["dd", "if=/dev/zero", f"of={base_dir}/small/filler", "bs=64k"], capture_output=True)
        r = cli("before", config=cfg)
        assert r.returncode != 0 and "No space left on device" in r.stderr, r.stderr
        assert len([ln for ln in r.stderr.splitlines() if "error:" in ln]) == 1
        assert open(os.path.join(work, "dump", "manifest.json")).read() == good
        assert not [n for n in os.listdir(work) if n.startswith("dump.")]
        assert populated.running()
    finally:
        populated.stop()
        fs.destroy()


@pytest.mark.needs_root
@pytest.mark.slow
def test_ten_thousand_mailboxes(sandbox, base_dir):
    """10k mailboxes through `before`: every one dumped, counted and in the
    manifest; an exclude glob resolved over all of them."""
    import socket

    n = 10_000
    with socket.create_connection(("127.0.0.1", sandbox.port)) as sock:
        f = sock.makefile("rwb")
        f.readline()
        f.write(b"a LOGIN cyrus x\r\n")
        f.flush()
        f.readline()
        users = n // 10
        cmds = []
        for u in range(users):
            cmds.append(f"c{u} CREATE user/u{u:05d}\r\n")
            cmds += [f"c{u}-{k} CREATE user/u{u:05d}/f{k}\r\n" for k in range(9)]
        f.write("".join(cmds).encode())
        f.write(b"z LOGOUT\r\n")
        f.flush()
        ok = sum(1 for line in f if b" OK " in line and not line.startswith(b"* "))
    assert ok >= n
    cfg = sandbox_config(sandbox, base_dir, exclude={"mailboxes": ["user/*/f3"]})
    r = cli("before", config=cfg, check=0)
    cli("after", config=cfg, check=0)
    manifest = json.load(open(os.path.join(base_dir, "work", "dump", "manifest.json")))
    assert manifest["counts"]["mailboxes"] == n
    assert len(manifest["mailboxes"]) == n
    assert len(manifest["excluded_mailboxes"]) == users
    patterns = open(os.path.join(base_dir, "work", "patterns")).read()
    assert patterns.count("cyrus\\.cache$") >= users
    assert "before: ready" in r.stderr


@pytest.mark.needs_root
def test_cyrus_tools_run_as_the_cyrus_user(populated, base_dir):
    """borg-cyrus runs Cyrus's tools as root without wrappers; each one drops
    to the cyrus user itself (cyrus_init). Seen from what they leave behind:
    after a stop-master backup and a full restore that rebuilds both databases
    with cyr_dbtool / ctl_cyrusdb / quota, every file of the server belongs to
    cyrus, and the restore never had to fix an owner."""
    sb = populated
    cfg = sandbox_config(sb, base_dir, mode="stop-master")
    cli("before", config=cfg, check=0)
    cli("after", config=cfg, check=0)

    def foreign():
        out = []
        for root in [sb.confdir, sb.sievedir] + list(sb.partitions.values()):
            for dirpath, dirnames, filenames in os.walk(root):
                for name in dirnames + filenames:
                    st = os.lstat(os.path.join(dirpath, name))
                    if (st.st_uid, st.st_gid) != (sb.uid, sb.gid):
                        out.append(os.path.join(dirpath, name))
        return out

    assert foreign() == []
    sb.stop()
    for db in ("mailboxes.db", "annotations.db"):
        os.unlink(os.path.join(sb.confdir, db))
    r = cli("restore", "full", config=cfg, check=0)
    assert "rebuilt" in r.stderr and "mailboxes.db" in r.stderr
    assert "ownership" not in r.stderr, r.stderr
    assert foreign() == []
    sb.start()
    c = sb.imap("alice")
    assert len(c.list()[1]) > 3
    c.logout()
