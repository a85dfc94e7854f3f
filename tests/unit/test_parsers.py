import pytest

from borg_cyrus.cyrus import dbbatch, mboxlist, storage
from borg_cyrus.cyrus.mboxlist import DumpError, NameMatcher

DUMP = (
    '{\n'
    '"user.alice": {"name": "user.alice", "mbtype": "e", "partition": "default", "uniqueid": "abc123", "acl": {"alice": "lrs"}},\n'
    '"user.alice.Junk": {"name": "user.alice.Junk", "mbtype": "e", "partition": "default", "uniqueid": "def456"},\n'
    '"user.dave.Old^Stuff": {"name": "user.dave.Old^Stuff", "mbtype": "el", "partition": "second", "uniqueid": "x9"},\n'
    '"example.com!user.bob.Junk": {"mbtype": "e", "partition": "default", "uniqueid": "zz1"},\n'
    '"user.gone": {"mbtype": "ed", "partition": "default", "uniqueid": "dd"}\n'
    '}\n'
)


def test_dump_parses_and_names():
    boxes = list(mboxlist.iter_dump(DUMP.splitlines()))
    assert [b.name for b in boxes] == [
        "user/alice",
        "user/alice/Junk",
        "user/dave/Old.Stuff",
        "user/bob/Junk@example.com",
        "user/gone",
    ]
    assert boxes[2].legacy and not boxes[0].legacy
    assert not boxes[4].has_spool
    assert boxes[3].userid == "bob@example.com"
    assert boxes[0].is_inbox and boxes[0].acl == {"alice": "lrs"}
    assert mboxlist.internal_name("user/dave/Old.Stuff") == "user.dave.Old^Stuff"
    assert mboxlist.internal_name("user/bob/Junk@example.com") == "example.com!user.bob.Junk"


@pytest.mark.parametrize(
    "text,needle",
    [
        ("", "truncated"),
        ('{\n"user.a": {"uniqueid": "x"},\n', "truncated"),
        ('{\n"user.a": {"uniqueid": "x"\n}\n', "not valid JSON"),
        ("hello\n", "does not start"),
    ],
)
def test_bad_dumps_fail(text, needle):
    with pytest.raises(DumpError, match=needle):
        list(mboxlist.iter_dump(text.splitlines()))


def test_uuid_dir():
    assert storage.uuid_dir("/p", "abc123") == "/p/uuid/a/b/abc123"


def test_name_globs():
    boxes = {b.name: b for b in mboxlist.iter_dump(DUMP.splitlines())}
    m = NameMatcher(["user/*/Junk"])
    assert m.match(boxes["user/alice/Junk"]) and m.match(boxes["user/bob/Junk@example.com"])
    assert not m.match(boxes["user/alice"])
    assert not NameMatcher(["user/*/Junk@other.org"]).match(boxes["user/bob/Junk@example.com"])
    assert NameMatcher(["user/**"]).match(boxes["user/dave/Old.Stuff"])
    assert not NameMatcher(["user/*"]).match(boxes["user/dave/Old.Stuff"])
    assert NameMatcher(["user/dave/Old.Stuff"]).match(boxes["user/dave/Old.Stuff"])


def test_batch_round_trip_is_binary_safe():
    records = [(b"N\x1fuser\x1falice", b"%(I abc)"), (b"key with space", b"\x00\r\n{5}\"quoted\""), (b"", b"")]
    script = dbbatch.load_script(records)
    # SHOW output uses the same encoding per record, one per line
    show = b"".join(dbbatch.literal(k) + b" " + dbbatch.literal(v) + b"\n" for k, v in records)
    assert dbbatch.parse(show) == records
    assert script.startswith(b"BEGIN\n") and script.endswith(b"COMMIT\n")
    assert dbbatch.parse(b'atom "q\\"s"\nNIL x\n') == [(b"atom", b'q"s'), (b"", b"x")]


@pytest.mark.parametrize("data", [b"{10+}\r\nshort", b"key", b"key value", b'"unterminated'])
def test_batch_truncation_detected(data):
    with pytest.raises(dbbatch.BatchFormatError):
        dbbatch.parse(data)
