"""The `databases` plugin (backup/databases.py) against a real Cyrus: `before`
dumps every database that holds state, live and through frozen views
(rsync-staging, btrfs), record for record what cyr_dbtool lists; the index
names every file; hostile per-user files are named and never followed or
waited for."""

import json
import os
import sqlite3
import stat
import subprocess
import sys

import pytest

from borg_cyrus.backup.dbrestore import read_entry
from borg_cyrus.cyrus import dbbatch
from borg_cyrus.tools.demo import populate
from support.common import cli, env
from support.setups import Setup

pytestmark = [pytest.mark.slow, pytest.mark.needs_root]


def stateful(sb):
    """populate() plus what it lacks: a third user's seen state on the shared
    folder, a ManageSieve script, a denied user."""
    populate(sb)
    a = sb.imap()
    a.create("user/carol")
    a.setacl("shared/team", "carol", "lrs")
    a.logout()
    c = sb.imap("carol")
    c.select("shared/team")
    c.store("1:2", "+FLAGS", "(\\Seen)")
    c.close()
    c.subscribe("shared/team")
    c.logout()
    sb.put_sieve("bob", "vacation", 'require "vacation";\nvacation "away";\n', active=True)
    sb.runner.run([os.path.join(sb.tools.directory, "cyr_deny"), "-C", sb.imapd_conf, "dave"])


def index(work):
    with open(os.path.join(work, "dump", "databases", "index.jsonl")) as f:
        lines = [json.loads(ln) for ln in f]
    return lines[0], lines[1:]


def show(sb, path, backend):
    r = sb.tool("cyr_dbtool", path, backend, "batch", input=b'SHOW ""\n')
    assert b"FAILED" not in r.stderr, r.stderr
    return dbbatch.parse(r.stdout)


@pytest.fixture(params=["live", "rsync-staging", "btrfs"])
def setup(request, base_dir):
    s = Setup(base_dir, "rsync-staging" if request.param == "live" else request.param)
    s.sb.create().start()
    s.view = request.param
    yield s
    s.destroy()


def test_before_dumps_every_stateful_database(setup):
    s, sb = setup, setup.sb
    stateful(sb)
    cfg = s.config(mode=s.view, databases={"conversations": True}, exclude={"mailboxes": []})
    cli("before", config=cfg, check=0)
    try:
        head, entries = index(s.work)
        top = os.path.join(s.work, "dump", "databases")
        assert head["format"] == "borg-cyrus databases" and head["version"] == 2
        assert not [e for e in entries if "error" in e], entries
        # the index names every file; per-user dumps are slices of one file per kind, end to end
        files = sorted(os.path.relpath(os.path.join(r, n), top) for r, _d, ns in os.walk(top) for n in ns)
        assert sorted({e["file"] for e in entries} | {"index.jsonl"}) == files
        for f in {e["file"] for e in entries if "offset" in e}:
            parts = sorted((e["offset"], e["bytes"]) for e in entries if e["file"] == f)
            assert [o for o, _n in parts] == [sum(n for _o, n in parts[:i]) for i in range(len(parts))], f
            assert os.path.getsize(os.path.join(top, f)) == sum(n for _o, n in parts)
        kinds = {}
        for e in entries:
            kinds.setdefault(e["kind"], []).append(e)
            data = read_entry(top, e)
            assert e["bytes"] == len(data)
            if e["file"].endswith(".sql"):
                continue
            recs = dbbatch.parse(data)
            assert len(recs) == e["records"]
            if e["via"] != "counters":  # the live file has not changed since: cyr_dbtool lists the same
                assert recs == show(sb, e["path"], e["backend"]), e
        assert {e["user"] for e in kinds["seen"]} == {"alice", "bob", "carol"}
        assert {e["user"] for e in kinds["sub"]} == {"alice", "bob", "carol"}
        assert {e["via"] for e in kinds["seen"] + kinds["sub"]} == {"reader"}
        assert all(e["path"].startswith(sb.confdir + "/user/uuid/") for e in kinds["seen"])
        seen = {e["user"]: dict(dbbatch.parse(read_entry(top, e))) for e in kinds["seen"]}
        assert len({tuple(v.values()) for v in seen.values()}) == 3  # three users, three seen states
        (quota,) = kinds["quota"]
        assert quota["backend"] == "quotalegacy" and quota["path"] == os.path.join(sb.confdir, "quota")
        assert {k for k, _ in dbbatch.parse(read_entry(top, quota))} == {
            b"user.alice",
            b"user.bob",
        }
        (deny,) = kinds["userdeny"]
        assert deny["records"] == 1 and deny["backend"] == "flat" and deny["via"] == "reader"
        assert kinds["conversations"] and {e["via"] for e in kinds["conversations"]} == {"cyr_dbtool"}
        # bob's dav.db holds his ManageSieve scripts: the SQL dump loads into a new SQLite database
        (dav,) = [e for e in kinds["dav"] if e["user"] == "bob"]
        new = sqlite3.connect(":memory:")
        new.executescript(read_entry(top, dav).decode())
        live = sqlite3.connect(f"file:{dav['path']}?mode=ro", uri=True)
        q = "SELECT name, isactive FROM sieve_scripts WHERE alive ORDER BY name"
        assert new.execute(q).fetchall() == live.execute(q).fetchall() == [("vacation", 1)]
        assert new.execute("PRAGMA user_version").fetchone() == live.execute("PRAGMA user_version").fetchone()
        assert dav["records"] == sum(new.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in _tables(new))
        m = json.load(open(os.path.join(s.work, "dump", "manifest.json")))
        sec = m["databases"]
        assert sec["index"] == "databases/index.jsonl" and sec["entries"] == len(entries) and sec["problem_count"] == 0
        assert sec["kinds"]["seen"]["files"] == 3 and sec["kinds"]["seen"]["backend"] == "twoskip"
        names = {d["name"] for d in m["dumps"]}
        assert {"databases/index.jsonl", "databases/seen", "databases/sub", "databases/quota"} <= names
        assert len(json.dumps(sec)) < 2000
    finally:
        cli("after", config=cfg, check=0)
    assert not [n for n in os.listdir(s.work) if n.startswith("dbcopy-")]


def _tables(con):
    return [r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")]


@pytest.mark.parametrize("setup", ["live", "rsync-staging"], indirect=True)
def test_hostile_per_user_files_are_named_not_followed(setup):
    """A symlink planted as alice's seen.db (to a root-only database), a FIFO
    as bob's sub.db, carol's seen.db truncated: `before` still succeeds, names
    each, never opens the FIFO blocking and never reads through the link."""
    s, sb = setup, setup.sb
    stateful(sb)
    cfg = s.config(mode=s.view, exclude={"mailboxes": []})
    cli("before", config=cfg, check=0)
    cli("after", config=cfg, check=0)
    _h, entries = index(s.work)
    path = {(e["user"], e["kind"]): e["path"] for e in entries if "user" in e}
    os.mkdir(os.path.join(s.base, "secret"), 0o755)
    os.chown(os.path.join(s.base, "secret"), sb.uid, sb.gid)
    secret = os.path.join(s.base, "secret", "root-secret.db")
    sb.tool("cyr_dbtool", "-n", secret, "twoskip", "batch", input=b"SET SECRET TOPSECRET\n")
    os.chown(secret, 0, 0)
    os.chmod(secret, 0o600)
    sb.stop()  # nothing of Cyrus's touches the planted files meanwhile
    os.unlink(path["alice", "seen"])
    os.symlink(secret, path["alice", "seen"])
    os.unlink(path["bob", "sub"])
    os.mkfifo(path["bob", "sub"])
    carol = path["carol", "seen"]
    data = open(carol, "rb").read()
    with open(carol, "wb") as f:
        f.write(data[: len(data) - 40])
    os.chown(carol, sb.uid, sb.gid)
    sb.start()
    argv = [sys.executable, "-m", "borg_cyrus", "-c", cfg, "before"]
    r = subprocess.run(argv, capture_output=True, text=True, env=env(), timeout=120)  # a FIFO must not hang it
    try:
        assert r.returncode == 0, r.stderr
        for p, what in ((path["alice", "seen"], "a symlink"), (path["bob", "sub"], "a FIFO"), (carol, "truncated")):
            assert p in r.stderr and what in r.stderr, (p, r.stderr)
        _h, entries = index(s.work)
        errors = {(e["user"], e["kind"]): e["error"] for e in entries if "error" in e}
        assert set(errors) == {("alice", "seen"), ("bob", "sub"), ("carol", "seen")}
        assert all("\n" not in e for e in errors.values())
        m = json.load(open(os.path.join(s.work, "dump", "manifest.json")))
        assert m["databases"]["problem_count"] == 3
        top = os.path.join(s.work, "dump")
        for root, _d, names in os.walk(top):
            for n in names:
                assert b"TOPSECRET" not in open(os.path.join(root, n), "rb").read(), n
        assert open(carol, "rb").read() == data[: len(data) - 40]  # never written (no recovery)
        assert os.path.islink(path["alice", "seen"])
        assert stat.S_ISFIFO(os.lstat(path["bob", "sub"]).st_mode)
    finally:
        cli("after", config=cfg, check=0)
