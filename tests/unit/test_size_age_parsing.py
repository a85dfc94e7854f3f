"""exclude.rules: the size/age parsers, the schema's one-line errors, the rule
matcher, the manifest's UID sets, and the INTERNALDATE of a synthetic
cyrus.index record."""

import re
import struct
import tempfile
import zlib

import pytest
import yaml

from borg_cyrus import config
from borg_cyrus.backup import rules
from borg_cyrus.cyrus import index, mboxlist
from borg_cyrus.errors import ConfigError


@pytest.mark.parametrize(
    "text,want",
    [
        (1024, 1024),
        ("1024", 1024),
        ("500k", 500 << 10),
        ("500K", 500 << 10),
        ("1MB", 1 << 20),
        ("2M", 2 << 20),
        ("1G", 1 << 30),
        ("1GiB", 1 << 30),
        ("1.5M", 3 << 19),
        (" 10 kb ", 10 << 10),
        ("12b", 12),
    ],
)
def test_parse_size(text, want):
    assert rules.parse_size(text) == want


@pytest.mark.parametrize("text", ["", "1 parsec", "M", "-1", "1MBB", "1e6", True, -5, None])
def test_parse_size_refuses(text):
    with pytest.raises(ValueError):
        rules.parse_size(text)


@pytest.mark.parametrize(
    "text,want", [("7d", 7 * 86400), ("12h", 12 * 3600), ("2w", 14 * 86400), ("30s", 30), ("1y", 365 * 86400)]
)
def test_parse_age(text, want):
    assert rules.parse_age(text) == want


@pytest.mark.parametrize("text", ["7", "7 days", "d", "7m", 7, True, "-1d"])
def test_parse_age_refuses(text):
    with pytest.raises(ValueError):
        rules.parse_age(text)


def _load(tmp_path, rule_list):
    p = tmp_path / "borg-cyrus.yaml"
    p.write_text(yaml.safe_dump({"exclude": {"rules": rule_list}}))
    p.chmod(0o600)
    return config.load(str(p))


def test_schema_accepts_the_readme_example(tmp_path):
    cfg = _load(
        tmp_path,
        [
            {"mailboxes": "user/*/Sent", "larger_than": "1MB", "older_than": "7d"},
            {"mailboxes": "**", "larger_than": 1048576, "older_than": "30d"},
            {"mailboxes": "user/*/Trash", "older_than": "2w"},
        ],
    )
    loaded = rules.load(cfg["exclude"]["rules"])
    assert [(r.larger_than, r.older_than) for r in loaded] == [
        (1 << 20, 7 * 86400),
        (1 << 20, 30 * 86400),
        (None, 14 * 86400),
    ]
    assert _load(tmp_path, [])["exclude"]["rules"] == []


@pytest.mark.parametrize(
    "rule,words",
    [
        ({"mailboxes": "user/*/Sent"}, "larger_than, older_than or both"),
        ({"larger_than": "1M"}, "a rule needs mailboxes"),
        ({"mailboxes": "x", "larger_than": "1 parsec"}, "exclude.rules[0].larger_than: '1 parsec' is not a size"),
        ({"mailboxes": "x", "older_than": "7 days"}, "exclude.rules[0].older_than: '7 days' is not an age"),
        ({"mailboxes": "x", "older_than": 7}, "exclude.rules[0].older_than: must be string"),
        ({"mailboxes": "x", "larger_than": "1M", "colour": 1}, "exclude.rules[0].colour: unknown key"),
        ({"mailboxes": "", "larger_than": "1M"}, "exclude.rules[0].mailboxes"),
    ],
)
def test_schema_errors_are_one_clear_line(tmp_path, rule, words):
    with pytest.raises(ConfigError) as e:
        _load(tmp_path, [rule])
    msg = str(e.value)
    assert "\n" not in msg
    assert words in msg, msg
    assert msg.startswith(str(tmp_path))


def rec(uid=1, size=100, date=0, flags=0):
    return index.Record(uid, size, flags, b"\0" * 20, date)


def test_rule_matches_both_conditions():
    now = 1_000_000_000
    r = rules.load([{"mailboxes": "user/*/Sent", "larger_than": "1M", "older_than": "7d"}])[0]
    old, new = now - 8 * 86400, now - 6 * 86400
    assert r.matches(rec(size=2 << 20, date=old), now)
    assert not r.matches(rec(size=2 << 20, date=new), now)
    assert not r.matches(rec(size=1 << 20, date=old), now)  # larger than, not equal
    assert not r.matches(rec(size=1 << 10, date=old), now)
    only_age = rules.load([{"mailboxes": "**", "older_than": "7d"}])[0]
    assert only_age.matches(rec(size=1, date=old), now) and not only_age.matches(rec(size=1 << 30, date=new), now)
    only_size = rules.load([{"mailboxes": "**", "larger_than": 10}])[0]
    assert only_size.matches(rec(size=11, date=now), now) and not only_size.matches(rec(size=10, date=0), now)
    # an index version whose records are not interpreted never matches
    assert not r.matches(index.Record(1, None, None, None, None), now)


def test_rule_globs_are_those_of_exclude_mailboxes():
    boxes = {
        mb.name: mb
        for mb in [
            mboxlist.Mailbox("user.alice.Sent", "u1", "default"),
            mboxlist.Mailbox("user.alice.Sent.2019", "u2", "default"),
            mboxlist.Mailbox("example.com!user.bob.Sent", "u3", "default"),
            mboxlist.Mailbox("user.alice", "u4", "default"),
        ]
    }
    m = mboxlist.NameMatcher([rules.load([{"mailboxes": "user/*/Sent", "larger_than": 1}])[0].mailboxes])
    assert sorted(n for n, mb in boxes.items() if m.match(mb)) == ["user/alice/Sent", "user/bob/Sent@example.com"]


def test_sequence_sets_round_trip_and_untrusted_text():
    uids = [1, 2, 3, 7, 9, 10, 100]
    assert rules.sequence_set(uids) == "1:3,7,9:10,100"
    assert rules.parse_sequence_set("1:3,7,9:10,100") == set(uids)
    assert rules.parse_sequence_set("x,3:1,0,-4,5:a,2:1000000000,6") == {6}
    assert rules.parse_sequence_set(None) == set()


def test_uid_regexes_match_exactly_those_files():
    (rx,) = list(rules.uid_regexes([3, 12, 7]))
    pat = re.compile(f"^{rx}$")
    assert [n for n in ["3.", "7.", "12.", "1.", "13.", "123.", "3", "cyrus.index"] if pat.match(n)] == [
        "3.",
        "7.",
        "12.",
    ]
    many = list(rules.uid_regexes(range(1, rules.UIDS_PER_PATTERN + 2)))
    assert len(many) == 2


def test_archived_trusts_only_listed_mailboxes():
    boxes = [mboxlist.Mailbox("user.alice.Sent", "u1", "default")]
    manifest = {
        rules.SECTION: {
            "mailboxes": {
                "user.alice.Sent": {"messages": 2, "bytes": 9, "uids": "4,6"},
                "user.mallory": {"messages": 1, "bytes": 1, "uids": "1"},
            }
        }
    }
    assert rules.archived(manifest, boxes) == {"user.alice.Sent": {4, 6}}
    assert rules.archived({rules.SECTION: "garbage"}, boxes) == {}
    assert rules.archived({}, boxes) == {}
    line = rules.restored_line(manifest, boxes, boxes)
    assert line == "2 message(s) left out by size/age rules in 1 mailbox(es): reconstructed"
    assert rules.restored_line({}, boxes, boxes) is None


def _index_v17(records):
    """A cyrus.index of minor version 17: a 160-byte header, 112-byte records, CRCs."""
    start, rsize = 160, 112
    hdr = bytearray(start)
    struct.pack_into(">IIII", hdr, 8, 17, start, rsize, len(records))
    struct.pack_into(">I", hdr, 28, max((r[0] for r in records), default=0))  # last_uid
    struct.pack_into(">I", hdr, 44, 4242)  # uidvalidity
    struct.pack_into(">I", hdr, 84, len(records))  # exists
    struct.pack_into(">I", hdr, start - 4, zlib.crc32(bytes(hdr[: start - 4])))
    out = bytes(hdr)
    for uid, date, size, flags in records:
        r = bytearray(rsize)
        struct.pack_into(">III", r, 0, uid, date, 0)
        struct.pack_into(">I", r, 12, size)
        struct.pack_into(">I", r, 32, flags)
        r[60:80] = bytes(range(20))
        struct.pack_into(">I", r, rsize - 4, zlib.crc32(bytes(r[:-4])))
        out += bytes(r)
    return out


def test_index_record_internaldate():
    data = _index_v17([(1, 1_700_000_000, 2_000_000, 0), (2, 1_800_000_000, 12, index.FLAG_EXPUNGED)])
    ix = index.parse(data)
    a, b = ix.records
    assert (a.uid, a.internaldate, a.size) == (1, 1_700_000_000, 2_000_000)
    assert b.internaldate == 1_800_000_000 and b.expunged
    assert [r.uid for r in ix.live()] == [1]  # expunged records are not messages


def test_index_records_too_short_for_their_fields_are_refused():
    """A forged header announcing 8-byte records of v17: one clear error, no struct.error."""
    data = bytearray(_index_v17([]))
    struct.pack_into(">III", data, 12, 160, 8, 2)
    data += b"\0" * 16
    struct.pack_into(">I", data, 156, zlib.crc32(bytes(data[:156])))
    with pytest.raises(index.IndexError_, match="implausible record size 8 for version 17"):
        index.parse(bytes(data))


def test_restage_index_revives_keeps_and_drops():
    """restore messages' staged index: revived records lose expunged and \\Deleted, records not brought
    back are marked expunged and unlinked, the CRCs stay right (index.parse checks them)."""
    from borg_cyrus.restore.messages import restage_index

    gone = index.FLAG_EXPUNGED | index.FLAG_UNLINKED
    data = _index_v17([(1, 1, 1, 0), (2, 2, 2, index.FLAG_EXPUNGED | index.FLAG_DELETED | 16), (3, 3, 3, 2)])
    with tempfile.NamedTemporaryFile() as f:
        f.write(data)
        f.flush()
        restage_index(f.name, keep={2, 3}, revived={2})
        recs = index.parse(open(f.name, "rb").read()).records
    assert [(r.uid, r.system_flags) for r in recs] == [(1, gone), (2, 16), (3, 2)]


def test_index_other_versions_have_no_internaldate():
    data = bytearray(_index_v17([(5, 1_700_000_000, 10, 0)]))
    struct.pack_into(">I", data, 8, 21)
    struct.pack_into(">I", data, 156, zlib.crc32(bytes(data[:156])))
    (r,) = index.parse(bytes(data)).records
    assert r.uid == 5 and r.internaldate is None and r.size is None


def test_uid_regexes_are_exact_tries():
    import random

    rnd = random.Random(12)
    for _ in range(200):
        uids = rnd.sample(range(1, 3000), rnd.randint(1, 300))
        pats = [re.compile(f"^{rx}$") for rx in rules.uid_regexes(uids)]
        assert {u for u in range(3100) if any(p.match(f"{u}.") for p in pats)} == set(uids)
        assert not any(p.match(f"0{uids[0]}.") or p.match(f"{uids[0]}") for p in pats)
    assert list(rules.uid_regexes([1, 10, 100, 12, 2])) == [r"(?:(?:1(?:(?:00?|2))?|2))\."]
