"""The parsers of what Cyrus writes, fuzzed: imapd.conf, cyr_dbtool batch dumps,
the mailbox list, modified UTF-7. Garbage is refused with the parser's own
error, never a crash; truncation is always detected."""

import pytest
from hypothesis import given, settings, strategies as st

from borg_cyrus.cyrus import dbbatch, imapdconf, imapview, mboxlist
from borg_cyrus.errors import ConfigError


# -- parsers -------------------------------------------------------------------


@given(st.text(max_size=400))
@settings(max_examples=300)
def test_imapd_conf_parser_never_crashes(text):
    try:
        values, _ = imapdconf.parse_text(text)
    except ConfigError:
        return
    for k, v in values.items():
        assert k == k.lower() and v == v.strip() and v


KEYS = st.from_regex(r"[a-z][a-z0-9_-]{0,20}", fullmatch=True)
VALUES = (
    st.text(st.characters(blacklist_categories=("Cc", "Cs"), blacklist_characters="\\"), min_size=1, max_size=40)
    .map(str.strip)
    .filter(bool)
)


@given(st.dictionaries(KEYS, VALUES, max_size=15))
def test_imapd_conf_round_trip(d):
    text = "".join(f"{k}: {v}\n" for k, v in d.items())
    assert imapdconf.parse_text(text)[0] == d


@given(st.lists(st.tuples(st.binary(max_size=60), st.binary(max_size=200)), max_size=30))
def test_batch_round_trip(records):
    show = b"".join(dbbatch.literal(k) + b" " + dbbatch.literal(v) + b"\n" for k, v in records)
    assert dbbatch.parse(show) == records


@given(st.binary(max_size=300))
@settings(max_examples=500)
def test_batch_parser_rejects_garbage_cleanly(data):
    try:
        dbbatch.parse(data)
    except dbbatch.BatchFormatError:
        pass


@given(st.lists(st.text(max_size=80), max_size=10))
@settings(max_examples=300)
def test_mailbox_dump_parser_rejects_garbage_cleanly(lines):
    try:
        list(mboxlist.iter_dump(lines))
    except mboxlist.DumpError:
        pass


@given(st.integers(1, 200), st.data())
def test_truncated_mailbox_dump_always_detected(n, data):
    lines = ["{"] + [f'"user.u{i}": {{"uniqueid": "id{i}", "partition": "default", "mbtype": "e"}},' for i in range(n)]
    lines[-1] = lines[-1].rstrip(",")
    lines.append("}")
    text = "\n".join(lines) + "\n"
    cut = data.draw(st.integers(0, len(text) - 3))
    if text[:cut].rstrip().endswith("}") and cut >= len(text) - 3:
        return
    with pytest.raises(mboxlist.DumpError):
        list(mboxlist.iter_dump(text[:cut].splitlines()))


def test_huge_inputs_are_fast():
    import time

    n = 100_000
    show = b"".join(
        dbbatch.literal(b"N\x1fuser\x1fu%d" % i) + b" " + dbbatch.literal(b"%(I x)") + b"\n" for i in range(n)
    )
    t = time.monotonic()
    assert len(dbbatch.parse(show)) == n
    lines = ["{"] + [f'"user.u{i}": {{"uniqueid": "abcd{i}", "partition": "default"}},' for i in range(n)] + ["}"]
    lines[-2] = lines[-2].rstrip(",")
    assert len(list(mboxlist.iter_dump(lines))) == n
    assert time.monotonic() - t < 30


@given(st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=30))
def test_mutf7_round_trip(s):
    assert imapview.mutf7_decode(imapview.mutf7_encode(s)) == s
