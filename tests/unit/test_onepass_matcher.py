"""The one-pass reader's matcher (restore/onepass.py) on item streams in
borg's order (each root depth-first): it matches exactly the paths asked for
and ends the walk only when each is behind it or proved absent, never while
a matched item is still waiting to be extracted. Pure: no borg run."""

import pytest

from borg_cyrus.restore.onepass import _Matcher, _Stop

STREAM = [
    "srv/work/dump",
    "srv/work/dump/manifest.json",
    "srv/work/dump/mailboxes.json",
    "srv/conf",
    "srv/conf/mailboxes.db",
    "srv/conf/user",
    "srv/conf/user/a",
    "srv/conf/user/a/alice.seen",
    "srv/sieve",
    "srv/spool",
    "srv/spool/uuid",
    "srv/spool/uuid/x",
    "srv/spool/uuid/x/xa",
    "srv/spool/uuid/x/xa/1.",
    "srv/spool/uuid/x/xab",
    "srv/spool/uuid/x/xab/1.",
    "srv/spool/uuid/y",
    "srv/spool/uuid/y/yb",
    "srv/spool/uuid/y/yb/1.",
    "srv/spool/uuid/z",
    "srv/spool/uuid/z/zc",
]


def walk(paths, stream=STREAM, extract_late=False):
    """(matched items, index where the walk stopped or None)."""
    m = _Matcher(paths)
    got = []
    for i, p in enumerate(stream):
        try:
            ok = m.match(p)
        except _Stop:
            return got, i, m
        if ok:
            got.append(p)
            if not extract_late:
                m.extracted.add(p)
    return got, None, m


def test_the_dump_ends_the_walk_where_it_ends():
    got, stop, m = walk(["/srv/work/dump"])
    assert got == STREAM[:3]
    assert stop == 3  # the first item after the dump ends it
    assert m.unmatched() == []


def test_a_prefix_is_not_a_sibling_and_absent_paths_are_proved_absent():
    got, stop, m = walk(["/srv/spool/uuid/x/xa", "/srv/sieve/a/alice", "/srv/conf/user/b/bob.seen"])
    assert got == ["srv/spool/uuid/x/xa", "srv/spool/uuid/x/xa/1."]  # not .../xab
    assert stop == STREAM.index("srv/spool/uuid/x/xab")
    assert m.unmatched() == ["srv/conf/user/b/bob.seen", "srv/sieve/a/alice"]


def test_a_path_at_the_end_makes_a_whole_walk():
    got, stop, _m = walk(["/srv/spool/uuid/z/zc", "/srv/conf/user/a/alice.seen"])
    assert stop is None and got == ["srv/conf/user/a/alice.seen", "srv/spool/uuid/z/zc"]


def test_a_path_outside_every_root_makes_a_whole_walk():
    got, stop, m = walk(["/srv/spool/uuid/x/xa", "/elsewhere/file"])
    assert stop is None and m.unmatched() == ["elsewhere/file"]


def test_never_stops_before_every_matched_item_is_extracted():
    # borg filters a whole item chunk before extracting any of it
    got, stop, m = walk(["/srv/work/dump"], extract_late=True)
    assert stop is None and got == STREAM[:3]


@pytest.mark.parametrize("name", ["re:x", "sh:*", "pp:a", "fm:*"])
def test_pattern_lookalikes_are_plain_paths(name):
    stream = ["d", f"d/{name}", f"d/{name}/1.", "d/other", "d/other/1.", "e"]
    got, _stop, m = walk([f"/d/{name}"], stream)
    assert got == [f"d/{name}", f"d/{name}/1."] and m.unmatched() == []
