"""Where restores look for files: borg_cyrus.cyrus.storage against Cyrus's own
`mbpath -j` on real servers (uuid and legacy layouts, fulldirhash,
virtual domains), plus the cyrus.header and cyrus.index readers against
files Cyrus wrote."""

import glob
import hashlib
import json
import os

import pytest

from borg_cyrus.cyrus import header, storage, index, mboxlist
from borg_cyrus.backup.excludes import iter_json_objects
from borg_cyrus.cyrus.layout import discover
from borg_cyrus.cyrus.names import display, to_intname
from borg_cyrus.cyrus.sandbox import Sandbox
from borg_cyrus.cyrus.imapview import mutf7_decode
from support.common import index_version

pytestmark = pytest.mark.needs_root


def _mbpath(sb, *args):
    return list(iter_json_objects(sb.tool("mbpath", "-j", *args).stdout.decode()))


def _boxes(sb):
    return [mb for mb in mboxlist.iter_dump(sb.tool("ctl_mboxlist", "-d").stdout.decode().splitlines()) if mb.has_spool]


def _check_server(sb, users):
    lay = storage.PathLayout.from_layout(discover(sb.imapd_conf))
    boxes = _boxes(sb)
    names = [mboxlist.external_name(mb.intname) for mb in boxes]
    answers = {o["mbname"]["intname"]: o for o in _mbpath(sb, *names)}
    # Cyrus 3.10's mbpath takes non-ASCII names in UTF-8 only
    again = [mboxlist.admin_name(mb.intname, utf8=True) for mb in boxes if mb.intname not in answers]
    if again:  # and answers with the UTF-8 intname
        by_decoded = {mutf7_decode(mb.intname): mb.intname for mb in boxes}
        answers.update({by_decoded[mutf7_decode(o["mbname"]["intname"])]: o for o in _mbpath(sb, *again)})
    assert len(answers) == len(boxes)
    for mb in boxes:
        assert storage.data_dir(lay, mb) == answers[mb.intname]["data"], mb.intname
        assert storage.index_dir(lay, mb) == answers[mb.intname]["meta"], mb.intname
        assert os.path.exists(os.path.join(storage.header_dir(lay, mb), "cyrus.header"))
    by_name = {mb.intname: mb for mb in boxes}
    for user in users:
        (ans,) = _mbpath(sb, "-u", user)
        inbox = by_name[ans["mbname"]["intname"]]
        paths = storage.user_paths(lay, user, inbox)
        if inbox.legacy:
            want = {ans["user"][k] for k in ("seen", "sub", "conversations", "counters", "dav", "xapianactive")}
            assert set(paths["user"]) == want
        else:
            assert paths["user"] == [os.path.dirname(ans["user"]["seen"])]
            assert all(os.path.dirname(v) == paths["user"][0] for k, v in ans["user"].items() if k != "sieve")
        assert paths["sieve"] == [ans["user"]["sieve"]]
    return lay, boxes


def test_paths_match_mbpath_on_the_demo_server(populated):
    lay, boxes = _check_server(populated, ["alice", "bob", "dave"])
    assert {mb.intname for mb in boxes if mb.legacy} == {"user.dave", "user.dave.Junk", "user.dave.Old Stuff"}
    # the quota files Cyrus wrote are where hash_quota() says
    for root in ("user.alice", "user.bob"):
        assert os.path.isfile(storage.quota_file(lay, root)), root
    assert storage.quota_file(lay, "user.alice").endswith("/quota/a/user.alice")


def test_paths_match_mbpath_with_fulldirhash_and_virtual_domains(base_dir):
    sb = (
        Sandbox(
            os.path.join(base_dir, "vd"),
            partitions=("default", "second"),
            extra_conf={"virtdomains": "userid", "fulldirhash": "yes"},
        )
        .create()
        .start()
    )
    try:
        a = sb.imap("cyrus")
        for name in ("user/carol@example.org", "user/carol/Old@example.org", "user/Zoë@example.org", "shared.x"):
            assert a.create('"' + name.replace("ë", "&AOs-") + '"')[0] == "OK", name
        assert a._simple_command("CREATE", '"user/carol/Far@example.org"', "second")[0] == "OK"
        assert a.setquota('"user/carol@example.org"', "(STORAGE 1000)")[0] == "OK"
        a.logout()
        # legacy-layout mailboxes of an upgraded server
        sb.restart_with_legacy_dirs(True)
        a = sb.imap("cyrus")
        for name in ("user/erin@example.org", "user/erin/Sub Folder@example.org", "user/frank"):
            assert a.create(f'"{name}"')[0] == "OK", name
        a.logout()
        sb.deliver("erin@example.org", b"Subject: x\r\n\r\nhello\r\n")
        lay, boxes = _check_server(sb, ["carol@example.org", "erin@example.org", "frank"])
        assert any(mb.legacy and mb.domain == "example.org" for mb in boxes)
        q = storage.quota_file(lay, "example.org!user.carol")
        assert os.path.isfile(q) and "/domain/" in q
    finally:
        sb.stop()


def test_cyrus_header_round_trip_and_index_records(populated):
    sb = populated
    lay = storage.PathLayout.from_layout(discover(sb.imapd_conf))
    seen = 0
    for mb in _boxes(sb):
        d = storage.data_dir(lay, mb)
        raw = open(os.path.join(d, "cyrus.header"), "rb").read()
        h = header.parse(raw)
        assert (h["N"], h["I"], h["T"]) == (mb.intname, mb.uniqueid, mb.mbtype)
        assert h["A"] == mb.acl
        assert header.render(h["T"], h["N"], h["I"], h["A"], h.get("Q"), h["U"]) == raw
        ix = index.read(os.path.join(d, "cyrus.index"))
        assert ix.minor_version == index_version(sb)
        for rec in ix.live():
            body = open(os.path.join(d, f"{rec.uid}."), "rb").read()
            assert len(body) == rec.size
            assert hashlib.sha1(body).digest() == rec.guid
            seen += 1
        assert len(ix.live()) == ix.exists
    assert seen >= 20
    # an expunged record is recognised (alice's Trash had UID 2 expunged)
    trash = [mb for mb in _boxes(sb) if mb.intname == "user.alice.Trash"][0]
    ix = index.read(os.path.join(storage.data_dir(lay, trash), "cyrus.index"))
    assert [r.uid for r in ix.records if r.expunged] == [2]
    # a header with a quoted name, a literal-worthy name and user flags parses back
    raw = header.render("e", 'user.bob.A "quoted" (name)', "abc", {"bob": "lrs"}, "user.bob", ["$X"])
    assert header.parse(raw)["N"] == 'user.bob.A "quoted" (name)'


def test_names_unicode_and_modified_utf7():
    assert to_intname("user/alice/Entwürfe") == "user.alice.Entw&APw-rfe"
    assert to_intname("user/alice/Entw&APw-rfe") == "user.alice.Entw&APw-rfe"
    assert to_intname("user/bob/Archive 2019") == "user.bob.Archive 2019"
    assert to_intname("user/bob/v1.2") == "user.bob.v1^2"
    assert to_intname("user/x/A&B") == "user.x.A&-B"
    assert to_intname("user/carol@example.org") == "example.org!user.carol"
    assert display("user.alice.Entw&APw-rfe") == "user/alice/Entwürfe"
    assert storage.dir_hash_c("alice") == "a" and storage.dir_hash_c("Zoë") == "z"
    assert storage.dir_hash_c("1x") == "q"
    assert "A" <= storage.dir_hash_c("alice", True) <= "W"


def test_manifest_layout_gives_the_same_paths(populated, base_dir):
    """An archived layout (manifest.json) and the live one compute the same paths."""
    from support.common import cli, sandbox_config

    cfg = sandbox_config(populated, base_dir)
    cli("before", config=cfg, check=0)
    cli("after", config=cfg, check=0)
    with open(os.path.join(base_dir, "work", "dump", "manifest.json")) as f:
        manifest = json.load(f)
    live = storage.PathLayout.from_layout(discover(populated.imapd_conf))
    arch = storage.PathLayout.from_manifest(manifest)
    for mb in _boxes(populated):
        assert storage.mailbox_dirs(arch, mb) == storage.mailbox_dirs(live, mb)
    assert storage.quota_file(arch, "user.bob") == storage.quota_file(live, "user.bob")
    assert glob.glob(os.path.join(base_dir, "work", "dump", "manifest.json"))
    # legacy mailboxes are counted too, and the consistency report is there and clean
    assert manifest["mailboxes"]["user.dave"]["messages"] == 1
    assert manifest["mailboxes"]["user.dave"]["layout"] == "legacy"
    assert manifest["consistency"]["counts"] == {"mailboxes_without_directory": 0, "directories_without_mailbox": 0}
