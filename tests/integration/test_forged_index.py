"""Forged cyrus.index records in an archive (real Cyrus, borg, borgmatic): a
real backup's index of a folder gets a record of UID 0, a second record of a
UID, a record of 2^32-1 bytes beside a small message file and a record of 55
bytes beside a 1 GiB sparse file, and is archived again with borg. `restore
mailbox`, `restore messages` (into a new folder and --in-place) and `restore
find` leave out exactly those, with one line each naming the mailbox and the
UID; the other messages come back as Cyrus served them; nothing big reaches
the spool. (Before: all were taken, the 1 GiB file placed whole.)"""

import hashlib
import json
import os
import struct
import subprocess
import zlib

import pytest

from borg_cyrus.cyrus import index, storage
from borg_cyrus.cyrus.imapview import quote
from borg_cyrus.cyrus.layout import discover
from support.common import BASE, env
from support.helpers import latest_archive
from support.restore_helpers import _boxes_by_name, backup, restore
from test_restore_messages import folder

pytestmark = [pytest.mark.needs_root, pytest.mark.slow]

BIG = 1 << 30
SIX = b"From: Carol <carol@example.org>\r\nSubject: six\r\nMessage-ID: <six@example.org>\r\n\r\nsix\r\n"


def message(box, i):
    return f"From: Carol <carol@example.org>\r\nSubject: {box} {i}\r\nMessage-ID: <{box}{i}@example.org>\r\n\r\n{i}\r\n"


@pytest.fixture(scope="module")
def world():
    """One backup of bob's folders Box and Box2 (5 messages each), an archive `forged` of it with their indexes
    forged, and both folders emptied on the live server (so that nothing counts as already there)."""
    import shutil

    from borg_cyrus.cyrus.sandbox import Sandbox

    base = os.path.join(BASE, "forged-index")
    if os.path.exists(base):
        for sub in os.listdir(base):
            Sandbox(os.path.join(base, sub)).stop()
        shutil.rmtree(base)
    os.makedirs(base, 0o755)
    sb = Sandbox(os.path.join(base, "cyrus")).create().start()
    adm = sb.imap("cyrus")
    for box in ("user/bob", "user/bob/Box", "user/bob/Box2"):
        assert adm.create(quote(box))[0] == "OK"
    adm.logout()
    bob = sb.imap("bob")
    for box in ("Box", "Box2"):
        for i in range(1, 6):
            flags = "(\\Seen $Work)" if i % 2 else "(\\Flagged)"
            assert bob.append(f"INBOX/{box}", flags, 1700000000 + 3600 * i, message(box, i).encode())[0] == "OK"
    archived = {box: folder(bob, f"INBOX/{box}") for box in ("Box", "Box2")}
    pw = os.path.join(base, "imap.pw")
    with open(os.open(pw, os.O_WRONLY | os.O_CREAT, 0o600), "w") as f:
        f.write("any password: the sandbox checks none\n")
    b = backup(sb, base, imap={"host": "127.0.0.1", "port": sb.port, "admin": "cyrus", "password_file": pw})
    real = latest_archive(b["repo"])
    # named as borgmatic names its archives (restore find lists those only: match_archives), after the real one
    b.update(sb=sb, base=base, archived=archived, real=real, forged=real.rsplit("-", 3)[0] + "-2999-01-01T00:00:00")
    forge(b)
    for box in ("Box", "Box2"):
        bob.select(f"INBOX/{box}")
        bob.uid("STORE", "1:*", "+FLAGS", "(\\Deleted)")
        bob.expunge()
    bob.logout()
    yield b
    sb.stop()
    shutil.rmtree(base, ignore_errors=True)


def forged_index(data, big_uid_file):
    """The records of a real index plus: UID 0 (a copy of UID 1), UID 2 twice, UID 6 of 2^32-1 bytes,
    UID 7 of 55 bytes. CRCs right, as a forger writes them."""
    minor, start, rsize, nrec = struct.unpack_from(">IIII", data, 8)
    recs = {struct.unpack_from(">I", data, start + i * rsize)[0]: data[start + i * rsize : start + (i + 1) * rsize]
            for i in range(nrec)}  # fmt: skip
    assert sorted(recs) == [1, 2, 3, 4, 5]
    lay = index.LAYOUTS[minor]

    def record(like, uid, size=None, guid=None):
        r = bytearray(recs[like])
        struct.pack_into(">I", r, 0, uid)
        if size is not None:
            struct.pack_into(">I", r, lay["size"], size)
        if guid is not None:
            r[lay["guid"] : lay["guid"] + 20] = guid
        struct.pack_into(">I", r, rsize - 4, zlib.crc32(bytes(r[:-4])))
        return bytes(r)

    out = [record(1, 0), recs[1], recs[2], recs[2], recs[3], recs[4], recs[5]]
    out += [record(5, 6, 2**32 - 1, hashlib.sha1(SIX).digest()), record(5, 7, 55, hashlib.sha1(big_uid_file).digest())]
    hdr = bytearray(data[:start])
    struct.pack_into(">I", hdr, 20, len(out))
    struct.pack_into(">I", hdr, index.HEADER_LAYOUTS[minor]["last_uid"], 7)
    struct.pack_into(">I", hdr, start - 4, zlib.crc32(bytes(hdr[: start - 4])))
    return bytes(hdr) + b"".join(out)


def forge(b):
    """Archive `forged`: the real archive with Box's and Box2's cyrus.index forged, a message file for UID 0 and
    UID 6, and for UID 7 a 1 GiB sparse file beside Box's 55-byte record (64 KiB beside Box2's)."""
    root = os.path.join(b["base"], "forge")
    os.makedirs(root)
    subprocess.run(
        ["borg", "extract", f"{b['repo']}::{b['real']}"], cwd=root, env=env(), check=True, capture_output=True
    )
    lay = storage.PathLayout.from_layout(discover(b["sb"].imapd_conf))
    boxes = _boxes_by_name(b["sb"])
    for box, size7 in (("Box", BIG), ("Box2", 64 << 10)):
        mb = boxes[f"user.bob.{box}"]
        d, ipath = root + storage.data_dir(lay, mb), root + storage.index_dir(lay, mb) + "/cyrus.index"
        with open(ipath, "rb") as f:
            data = f.read()
        with open(os.path.join(d, "1."), "rb") as f:
            one = f.read()
        with open(os.path.join(d, "0."), "wb") as f:
            f.write(one)
        with open(os.path.join(d, "6."), "wb") as f:
            f.write(SIX)
        with open(os.path.join(d, "7."), "wb") as f:
            f.truncate(size7)  # sparse: borg stores its zeros in a few chunks
        with open(ipath, "wb") as f:
            f.write(forged_index(data, bytes(size7) if size7 < BIG else b""))
    subprocess.run(["borg", "create", f"{b['repo']}::{b['forged']}", *sorted(os.listdir(root))], cwd=root, env=env(),
                   check=True, capture_output=True)  # fmt: skip
    subprocess.run(["rm", "-rf", root], check=True)


def skipped(r, box):
    """{UID: line} of the lines saying a message of box was left out, each UID once."""
    lines = [ln for ln in r.stderr.splitlines() if f"user/bob/{box} UID " in ln]
    uids = [int(ln.split(" UID ")[1].split(":")[0]) for ln in lines]
    assert len(uids) == len(set(uids)), r.stderr
    return dict(zip(uids, lines))


def check_skipped(r, box, big):
    lines = skipped(r, box)
    assert sorted(lines) == [0, 2, 6, 7], r.stderr
    assert "Cyrus numbers messages from 1" in lines[0] and "it is in 2 index records" in lines[2]
    assert (
        "its index record says 4294967295" in lines[6]
        and f"its file is {big} bytes, its index record says 55" in (lines[7])
    )
    assert all("-2999-01-01T00:00:00: user/bob/" in ln and "forged or damaged" in ln for ln in lines.values())
    assert "Traceback" not in r.stderr


def nothing_big(b):
    """No file of the spool or the work directory (staging) is bigger than a mail of this test."""
    for top in (b["sb"].base, b["work"]):
        for root, _dirs, files in os.walk(top):
            for n in files:
                p = os.path.join(root, n)
                if not os.path.islink(p):
                    assert os.lstat(p).st_size < (1 << 20), p


def good(b, box):
    """The archived messages that must come back: all but UID 2 (two records: which is right is unknown)."""
    return {u: v for u, v in b["archived"][box].items() if u != 2}


def test_restore_mailbox_leaves_out_forged_records(world):
    b = world
    r = restore(b, "mailbox", "user/bob/Box", "--into", "user/bob/R1", "--archive", b["forged"])
    check_skipped(r, "Box", BIG)
    bob = b["sb"].imap("bob")
    assert folder(bob, "INBOX/R1") == good(b, "Box")  # UIDs, bytes, flags, INTERNALDATE
    bob.logout()
    nothing_big(b)


def test_restore_messages_leaves_out_forged_records(world):
    b = world
    r = restore(b, "messages", "user/bob/Box", "--into", "user/bob/R2", "--archive", b["forged"])
    check_skipped(r, "Box", BIG)
    assert "4 chosen" in r.stdout, r.stdout
    bob = b["sb"].imap("bob")
    assert folder(bob, "INBOX/R2") == good(b, "Box")
    bob.logout()
    nothing_big(b)


def test_restore_in_place_leaves_out_forged_records(world):
    b = world
    r = restore(b, "messages", "user/bob/Box2", "--in-place", "--archive", b["forged"])
    check_skipped(r, "Box2", 64 << 10)
    assert "appended 4 message(s)" in r.stdout, r.stdout
    bob = b["sb"].imap("bob")
    assert sorted(folder(bob, "INBOX/Box2").values()) == sorted(good(b, "Box2").values())
    bob.logout()
    nothing_big(b)


def test_find_does_not_list_forged_records(world):
    b = world
    r = restore(b, "find", "--user", "bob", "--mailbox", "user/bob/Box2", "--json")
    check_skipped(r, "Box2", 64 << 10)
    hits = {m["uid"]: (m["first"], m["last"]) for m in json.loads(r.stdout)["messages"]}
    real = b["real"]
    # the forged archive holds messages 1, 3, 4 and 5 (same GUIDs), not UID 2 (in two records), nothing else
    f = b["forged"]
    assert hits == {1: (real, f), 2: (real, real), 3: (real, f), 4: (real, f), 5: (real, f)}, r.stdout


def test_verify_names_forged_records(world):
    """The drill fails the folders whose index holds records no Cyrus writes, naming each UID (before: UID 0 and
    a UID in two records passed the drill; only the size mismatches were named)."""
    from support.common import cli

    b = world
    r = cli("verify", "--archive", b["forged"], "--borgmatic-config", b["bm"], config=b["bc"], check=1)
    out = r.stdout + r.stderr
    for box in ("Box", "Box2"):
        assert f"user/bob/{box}" in out, out
    assert "UID 0: its index record is forged or damaged (Cyrus numbers messages from 1)" in out, out
    assert "UID 2: its index record is forged or damaged (it is in 2 index records)" in out, out
    assert "UID 7: " in out and "the index says 55" in out, out
    assert "Traceback" not in out
