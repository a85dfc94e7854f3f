"""Restores from text alone onto other database backends: a server backed up
on one set of backends, restored onto the same Cyrus configured with another
for every database, with every raw database file deleted from the extracted
tree (twoskip, skiplist and SQLite headers; per-user files included). What
IMAP and ManageSieve clients see must be identical; and the reverse way."""

import os
import subprocess

import pytest

from borg_cyrus.cyrus.sandbox import Sandbox
from borg_cyrus.tools.demo import populate
from support.common import cli, sandbox_config
from support.restore_helpers import delete_user
from support.helpers import borgmatic, borgmatic_config, expected, extract, init_repo, load_manifest, snapshot, wipe

pytestmark = [pytest.mark.needs_root, pytest.mark.slow]

DEFAULTS = {}
OTHERS = {
    "mboxlist_db": "skiplist",
    "annotation_db": "skiplist",
    "seenstate_db": "skiplist",
    "subscription_db": "skiplist",
    "quota_db": "twoskip",
    "mboxkey_db": "skiplist",
    "userdeny_db": "twoskip",
    "duplicate_db": "skiplist",  # a cache: kept in the tree below, moved aside by the restore
}
CACHE = "deliver.db"
MAGIC = (b"\xa1\x02\x8b\x0dtwoskip file", b"\xa1\x02\x8b\x0dskiplist file", b"SQLite format 3\x00")


def delete_raw_databases(root):
    """Every file under root that starts like a twoskip, skiplist or SQLite database (but the cache)."""
    gone = []
    for dirpath, _dirs, files in os.walk(root):
        for n in files:
            p = os.path.join(dirpath, n)
            if n == CACHE:
                continue
            with open(p, "rb") as f:
                head = f.read(20)
            if head.startswith(MAGIC):
                os.unlink(p)
                gone.append(os.path.relpath(p, root))
    return gone


@pytest.mark.parametrize("archived, restored", [(DEFAULTS, OTHERS), (OTHERS, DEFAULTS)], ids=["to-others", "back"])
def test_restore_onto_other_backends_from_text_alone(base_dir, archived, restored):
    sb = Sandbox(os.path.join(base_dir, "cyrus"), partitions=("default", "second"), extra_conf=archived).create()
    sb.start()
    try:
        populate(sb, managesieve=True)
        subprocess.run(
            [os.path.join(sb.tools.directory, "cyr_deny"), "-C", sb.imapd_conf, "-s", "pop3", "dave"], check=True
        )
        before = snapshot(sb)
        # deliver.db kept in the archive (not the default) to meet a cache of another backend
        exclude = {"mailboxes": ["user/*/Junk"], "regenerable": ["cache-dbs", "search-indexes", "runtime"]}
        bc = sandbox_config(sb, base_dir, mode="stop-master", exclude=exclude)
        repo = os.path.join(base_dir, "repo")
        bm = borgmatic_config(base_dir, repo, os.path.join(base_dir, "work", "patterns"))
        init_repo(bm)
        borgmatic(bm, "create", bc_config=bc)
        manifest = load_manifest(os.path.join(base_dir, "work"))
        assert manifest["databases"]["kinds"]["seen"]["files"] >= 2

        wipe(sb)
        subprocess.run(["rm", "-rf", os.path.join(base_dir, "work", "dump")], check=True)
        extract(repo)
        gone = delete_raw_databases(sb.confdir)
        assert "mailboxes.db" in gone and any(p.endswith("seen.db") for p in gone)
        assert os.path.isfile(os.path.join(sb.confdir, CACHE)), "the demo's deliveries made no duplicate cache"
        sb.extra_conf = restored
        sb.write_config()
        r = cli("restore", "full", config=bc, check=0)
        for kind in ("seen", "sub"):
            assert f"{kind} database(s) from the text dumps" in r.stderr, r.stderr
        assert "moved the duplicate cache" in r.stderr, r.stderr
        sb.start()
        after = snapshot(sb)
        assert after == expected(before, manifest)
        deny = subprocess.run(
            [os.path.join(sb.tools.directory, "cyr_deny"), "-C", sb.imapd_conf, "-l"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        assert "dave" in deny

        # one user, into the server on the other backends: alice's archived
        # seen.db is of the archived backend, so it is rebuilt from its dump
        delete_user(sb, "alice")
        r = cli("restore", "user", "alice", "--borgmatic-config", bm, config=bc, check=0)
        if archived.get("seenstate_db") != restored.get("seenstate_db"):
            assert "seen database(s) from the text dumps" in r.stdout, r.stdout
        assert snapshot(sb) == after
    finally:
        sb.stop()


def test_unreadable_per_user_databases_are_rebuilt_from_text(base_dir):
    """Same backends, but alice's seen.db and bob's dav.db damaged in the extracted tree: rebuilt from the dumps."""
    sb = Sandbox(os.path.join(base_dir, "cyrus"), partitions=("default", "second")).create()
    sb.start()
    try:
        populate(sb, managesieve=True)
        before = snapshot(sb)
        bc = sandbox_config(sb, base_dir, mode="stop-master", exclude={"mailboxes": ["user/*/Junk"]})
        repo = os.path.join(base_dir, "repo")
        bm = borgmatic_config(base_dir, repo, os.path.join(base_dir, "work", "patterns"))
        init_repo(bm)
        borgmatic(bm, "create", bc_config=bc)
        manifest = load_manifest(os.path.join(base_dir, "work"))
        wipe(sb)
        subprocess.run(["rm", "-rf", os.path.join(base_dir, "work", "dump")], check=True)
        extract(repo)
        damaged = []
        for dirpath, _dirs, files in os.walk(os.path.join(sb.confdir, "user")):
            for n in files:
                if n in ("seen.db", "dav.db"):
                    p = os.path.join(dirpath, n)
                    with open(p, "r+b") as f:  # the header kept, the records garbage
                        f.seek(64)
                        f.write(os.urandom(max(64, os.path.getsize(p) - 64)))
                    damaged.append(n)
        assert "seen.db" in damaged and "dav.db" in damaged, damaged
        r = cli("restore", "full", config=bc, check=0)
        assert "seen database(s) from the text dumps (unreadable" in r.stderr, r.stderr
        assert "dav database(s) from the text dumps (unreadable" in r.stderr, r.stderr
        sb.start()
        assert snapshot(sb) == expected(before, manifest)
    finally:
        sb.stop()
