"""Frequent database-only backups (`before --dumps-only`, the shipped
sample-borgmatic-hourly.yaml) and `restore full --dumps-from`: the nightly's
messages with the hourly's mailbox list and per-user state."""

import os
import subprocess

import pytest

from borg_cyrus.cyrus.imapview import quote
from borg_cyrus.tools.demo import msg
from support.common import ROOT, cli, env, sandbox_config, write_config
from support.helpers import borgmatic, borgmatic_config, extract, init_repo, read_yaml, snapshot, wipe

pytestmark = [pytest.mark.needs_root, pytest.mark.slow]


def hourly_config(base, repo, work):
    data = read_yaml(os.path.join(ROOT, "sample-borgmatic-hourly.yaml"))
    data["repositories"] = [{"path": repo, "label": "local"}]
    data["patterns_from"] = [os.path.join(work, "patterns-dumps")]
    return write_config(os.path.join(base, "borgmatic-hourly.yaml"), data)


def archives(repo, pattern):
    r = subprocess.run(
        ["borg", "list", "--short", "--glob-archives", pattern, repo],
        capture_output=True,
        text=True,
        check=True,
        env=env(),
    )
    return r.stdout.split()


def test_nightly_plus_hourly(populated, base_dir):
    sb = populated
    work = os.path.join(base_dir, "work")
    bc = sandbox_config(sb, base_dir, mode="stop-master")
    repo = os.path.join(base_dir, "repo")
    nightly = borgmatic_config(base_dir, repo, os.path.join(work, "patterns"))
    hourly = hourly_config(base_dir, repo, work)
    init_repo(nightly)
    borgmatic(nightly, "create", bc_config=bc)

    # the day goes on: new folders, changed ACLs and METADATA, subscriptions,
    # bob's \Seen on the shared folder (his seen.db), new mail
    at_night = snapshot(sb)
    a = sb.imap()
    assert a.create(quote("user/alice/Projekt Ü"))[0] == "OK"
    assert a.create("user/bob/New")[0] == "OK"
    a.setacl("user/bob/New", "alice", "lrs")
    a.setacl(quote("user/bob/Archive 2019"), "alice", "lrswi")
    a.logout()
    al = sb.imap("alice")
    al.subscribe(quote("INBOX/Projekt Ü"))
    assert (
        al._simple_command("SETMETADATA", quote("INBOX/Projekt Ü"), '(/private/comment "made in the afternoon")')[0]
        == "OK"
    )
    al.logout()
    bo = sb.imap("bob")
    bo.select(quote("shared/team"))
    bo.store("1:*", "+FLAGS", "\\Seen")
    bo.unsubscribe(quote("shared/team"))
    bo.logout()
    sb.deliver("bob", msg("after the nightly", "only in the spool after the nightly: lost"))
    day = snapshot(sb)

    r = borgmatic(hourly, "create", "--verbosity", "1", bc_config=bc)
    assert "before --dumps-only: ready" in r.stdout + r.stderr
    hours = archives(repo, "{hostname}-dumps-*")
    nights = archives(repo, "{hostname}-[0-9]*")  # what sample-borgmatic.yaml matches
    assert len(hours) == 1 and len(nights) == 1
    # the hourly run is cheap: no spool in it, Cyrus never stopped
    listing = subprocess.run(
        ["borg", "list", "--format", "{path}{NL}", f"{repo}::{hours[0]}"],
        capture_output=True,
        text=True,
        check=True,
        env=env(),
    )
    assert not any(p.startswith(sb.partitions["default"].lstrip("/")) for p in listing.stdout.splitlines())

    wipe(sb)
    subprocess.run(["rm", "-rf", os.path.join(work, "dump")], check=True)
    extract(repo, nights[0])
    r = cli("restore", "full", "--dumps-from", hours[0], "--borgmatic-config", hourly, config=bc, check=0)
    assert "created after the archive came back empty: user/alice/Projekt Ü, user/bob/New" in r.stderr, r.stderr
    sb.start()
    after = snapshot(sb)
    for user in ("alice", "bob", "dave"):
        got, want = after[user], day[user]
        # the hourly's mailbox list, ACLs, METADATA and subscriptions
        assert sorted(got["mailboxes"]) == sorted(want["mailboxes"]), user
        assert got["subscriptions"] == want["subscriptions"], user
        for name, box in want["mailboxes"].items():
            assert got["mailboxes"][name]["acl"] == box["acl"], (user, name)
            assert got["mailboxes"][name]["metadata"] == box["metadata"], (user, name)
            # the nightly's messages (a folder made after it comes back empty); others' \Seen is the hourly's
            night = at_night[user]["mailboxes"].get(name)
            if night is None and name.endswith(("Projekt Ü", "/New")):  # made after the nightly
                assert got["mailboxes"][name]["messages"] == {}, (user, name)
            elif night is None:  # shared with this user after the nightly: its messages, this user's \Seen
                assert got["mailboxes"][name]["messages"] == box["messages"], (user, name)
            elif name == "shared/team" and user == "bob":
                assert got["mailboxes"][name]["messages"] == box["messages"], "bob's \\Seen of the afternoon"
            else:
                assert got["mailboxes"][name]["messages"] == night["messages"], (user, name)
