"""cyrus.index records against their files (cyrus/index.py: vet, file_problem,
rewrite_flags), the size/age rules on forged live records (backup/rules.py),
and the forms a message takes on an IMAP APPEND to Cyrus (cyrus/imapadmin.py:
append_form, munge8, content_keys). What Cyrus does with each form is checked
for real by tests/integration/test_restore_inplace.py; here the functions."""

import hashlib
import os
import struct
import types
import zlib

import pytest

from borg_cyrus.backup import rules
from borg_cyrus.cyrus import imapadmin, index, storage
from borg_cyrus.cyrus import layout as layout_mod
from borg_cyrus.cyrus.mboxlist import Mailbox
from borg_cyrus.model import View


def index_v17(records):
    """A cyrus.index of minor version 17: records [(uid, size, flags, guid)], CRCs right."""
    start, rsize = 160, 112
    hdr = bytearray(start)
    struct.pack_into(">IIII", hdr, 8, 17, start, rsize, len(records))
    struct.pack_into(">I", hdr, 28, max((r[0] for r in records), default=0))
    struct.pack_into(">I", hdr, start - 4, zlib.crc32(bytes(hdr[: start - 4])))
    out = bytes(hdr)
    for uid, size, flags, guid in records:
        r = bytearray(rsize)
        struct.pack_into(">II", r, 0, uid, 1_700_000_000)
        struct.pack_into(">I", r, 12, size)
        struct.pack_into(">I", r, 32, flags)
        r[60:80] = guid
        struct.pack_into(">I", r, rsize - 4, zlib.crc32(bytes(r[:-4])))
        out += bytes(r)
    return out


def sha(data):
    return hashlib.sha1(data).digest()


def test_vet_names_uid_zero_and_every_record_of_a_repeated_uid():
    ix = index.parse(index_v17([(0, 5, 0, b"\1" * 20), (1, 5, 0, b"\2" * 20), (2, 5, 0, b"\3" * 20),
                                (2, 9, 0, b"\4" * 20), (3, 5, 0, b"\5" * 20), (2, 5, 0, b"\6" * 20)]))  # fmt: skip
    good, bad = index.vet(ix.records)
    assert [r.uid for r in good] == [1, 3]
    assert bad == [(0, "Cyrus numbers messages from 1"), (2, "it is in 3 index records")]
    assert index.vet([]) == ([], [])


def test_file_problem_size_first_then_content():
    data = b"Subject: x\r\n\r\nbody\r\n"
    rec = index.Record(7, len(data), 0, sha(data))
    assert index.file_problem(rec, len(data)) is None
    assert index.file_problem(rec, len(data), data) is None
    assert index.file_problem(rec, 1 << 30) == f"its file is {1 << 30} bytes, its index record says {len(data)}"
    big = index.Record(8, 2**32 - 1, 0, sha(data))
    assert index.file_problem(big, len(data)) == f"its file is {len(data)} bytes, its index record says 4294967295"
    other = b"Subject: y\r\n\r\nbody\r\n"
    assert index.file_problem(rec, len(other), other) == "its file's SHA-1 is not the GUID of its index record"
    assert index.file_problem(index.Record(9, len(other), 0, bytes(20)), len(other), other) is None  # no GUID
    assert index.file_problem(index.Record(9, None, None, None), 123, other) is None  # an index not interpreted


def test_rewrite_flags_keeps_crcs_right(tmp_path):
    p = tmp_path / "cyrus.index"
    p.write_bytes(index_v17([(1, 5, 16, b"\1" * 20), (2, 5, 0, b"\2" * 20), (2, 5, 2, b"\3" * 20)]))
    gone = index.FLAG_EXPUNGED | index.FLAG_UNLINKED
    assert index.rewrite_flags(str(p), lambda uid, fl: fl | gone if uid == 2 else fl) == 2
    recs = index.read(str(p)).records  # parse checks every CRC
    assert [(r.uid, r.system_flags) for r in recs] == [(1, 16), (2, gone), (2, gone | 2)]
    assert [index.unlinked(r) for r in recs] == [False, True, True]


def test_size_rules_trust_no_forged_live_record(tmp_path, caplog):
    """The live index is the cyrus user's: a record of UID 0 or a UID twice excludes nothing, and a record
    whose size is not its file's is not left out for its size; each is one warning and stays in the backup."""
    spool = tmp_path / "spool"
    conf = tmp_path / "imapd.conf"
    conf.write_text(f"configdirectory: {tmp_path}/conf\npartition-default: {spool}\n")
    lay = layout_mod.discover(str(conf))
    mb = Mailbox("user.bob.Big", "b1b2c3d4e5f6a7b8c9d0e1f2", "default")
    d = storage.data_dir(storage.PathLayout.from_layout(lay), mb)
    os.makedirs(d)
    real = b"x" * 2000
    for uid, size in ((1, 2000), (2, 2000), (3, 2000), (4, 10)):
        with open(os.path.join(d, f"{uid}."), "wb") as f:
            f.write(real if size == 2000 else b"y" * size)
    records = [(0, 2000, 0, sha(real)), (1, 2000, 0, sha(real)), (2, 2000, 0, sha(real)), (2, 2000, 0, sha(real)),
               (3, 2000, 0, sha(real)), (4, 2**32 - 1, 0, sha(real))]  # fmt: skip
    with open(os.path.join(d, "cyrus.index"), "wb") as f:
        f.write(index_v17(records))
    ctx = types.SimpleNamespace(layout=lay)
    sel = rules.select(ctx, View(str(conf), lay), [mb], {"rules": [{"mailboxes": "user/*/Big", "larger_than": 1000}]})
    (ch,) = sel.chosen
    assert ch.by_dir == {d: [(1, 2000), (3, 2000)]}  # not 0, not 2 (twice), not 4 (its file is 10 bytes)
    lines = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(lines) == 2, lines
    assert "user/bob/Big: index record(s) no Cyrus writes, kept in the backup: UID 0 (Cyrus numbers messages " \
        "from 1), UID 2 (it is in 2 index records)" in lines[0]  # fmt: skip
    assert "user/bob/Big UID 4: its file is 10 bytes, its index record says 4294967295; kept" in lines[1]


# -- what an APPEND to Cyrus makes of a message --------------------------------
@pytest.mark.parametrize(
    "data, end",
    [
        (b"A: b\r\nC: d\r\n\r\nbody\r\n", 14),
        (b"A: b\nC: d\n\nbody\n", 11),
        (b"A: b\r\n\r\r\nbody", 9),  # a line of CRs ends the header too
        (b"\r\nbody", 2),
        (b"A: b\r\nno blank line", 19),
    ],
)
def test_header_end_as_cyrus_reads_it(data, end):
    assert imapadmin.header_end(data) == end


def test_append_form_changes_only_what_cyrus_refuses():
    body_lf = b"From: a@example.org\r\nSubject: s\r\n\r\nline\nline\n"
    assert imapadmin.append_form(body_lf) == body_lf  # a literal8 takes the body's bare LFs
    assert imapadmin.append_form(body_lf, binary=False) == b"From: a@example.org\r\nSubject: s\r\n\r\nline\r\nline\r\n"
    header_lf = b"From: a@example.org\nSubject: s\n\nline\n"
    assert imapadmin.append_form(header_lf) == b"From: a@example.org\r\nSubject: s\r\n\r\nline\n"
    cr_nul = b"Subject: s\r\n\r\nbare\rcr\0nul\r\n"
    assert imapadmin.append_form(cr_nul) == cr_nul  # a bare CR and a body NUL are stored as they are


def test_munge8_touches_the_header_only():
    assert imapadmin.munge8(b"Subject: \xc3\xbcber\r\n\r\n\xc3\xbc\r\n") == b"Subject: XXber\r\n\r\n\xc3\xbc\r\n"


def test_content_keys_hold_every_form_of_the_message_on_the_server():
    data = b"From: a@example.org\nSubject: \xc3\xbc\n\nline\nbare\rcr\n"
    keys = imapadmin.content_keys(data)
    assert sha(data) in keys
    assert sha(imapadmin.append_form(data)) in keys  # what this version appends
    assert sha(imapadmin.munge8(imapadmin.append_form(data))) in keys  # ... as munge8bit stores it
    assert sha(b"From: a@example.org\r\nSubject: \xc3\xbc\r\n\r\nline\r\nbare\r\ncr\r\n") in keys  # imaplib's append
    assert sha(b"From: a@example.org\r\nSubject: s\r\n\r\nline\r\n") not in keys
    plain = b"Subject: s\r\n\r\nbody\r\n"
    assert imapadmin.content_keys(plain) == {sha(plain)}
