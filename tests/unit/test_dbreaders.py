"""The pure-Python database readers (cyrus/dbformats.py) and their safe file
access (cyrus/dbfiles.py), without Cyrus: generated files, Cyrus's flat
escaping, garbage and mutations that must be refused with DbError and never
crash or hang. Equality with cyr_dbtool over real Cyrus files is proved in
tests/integration/test_dbreaders_cyrus.py."""

import os
import sqlite3
import struct
import subprocess
import sys
import zlib

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from borg_cyrus.cyrus import dbfiles, dbformats
from borg_cyrus.cyrus.dbformats import DbError
from borg_cyrus.safety import safeio
from support import twoskipgen

KEYS = st.binary(min_size=1, max_size=40)
RECORDS = st.dictionaries(KEYS, st.binary(max_size=300), max_size=25).map(lambda d: sorted(d.items()))


# -- twoskip -------------------------------------------------------------------


@given(RECORDS)
def test_twoskip_reads_what_was_written(records):
    assert dbformats.read_twoskip(twoskipgen.build(records)) == records


@given(RECORDS, st.binary(min_size=1, max_size=200))
def test_twoskip_ignores_an_uncommitted_tail(records, tail):
    data = twoskipgen.build(records, tail=tail, dirty=True)
    assert dbformats.read_twoskip(data) == records


@given(RECORDS.filter(bool), st.data())
def test_twoskip_truncated_is_refused_or_unchanged(records, data):
    full = twoskipgen.build(records, tail=b"\0" * 40)
    cut = data.draw(st.integers(0, len(full) - 1))
    try:
        got = dbformats.read_twoskip(full[:cut])
    except DbError as e:
        assert "truncated" in str(e) or "too short" in str(e) or cut < 64
        return
    # as Cyrus's recovery1: what the committed chain reaches is all there is (a cut commit record or tail is fine)
    assert cut == 0 and got == [] or got == records


@given(RECORDS, st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), min_size=1, max_size=8))
@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
def test_twoskip_mutations_never_crash(records, flips):
    data = bytearray(twoskipgen.build(records))
    for pos, byte in flips:
        data[pos % len(data)] = byte
    try:
        out = dbformats.read_twoskip(bytes(data))
    except DbError:
        return
    keys = [k for k, _ in out]
    assert keys == sorted(set(keys))


@given(st.binary(max_size=600))
@settings(max_examples=400)
def test_twoskip_garbage_never_crashes(tail):
    for data in (tail, twoskipgen.MAGIC + tail, twoskipgen.header(1, 64 + len(tail)) + tail):
        try:
            dbformats.read_twoskip(data)
        except DbError:
            pass


def test_twoskip_loop_is_refused():
    data = bytearray(twoskipgen.build([(b"a", b"1"), (b"b", b"2")]))
    # point b back at a: keys would repeat forever
    first = struct.unpack_from(">Q", data, 64 + 8)[0]
    rec_b = first + 8 + 16 + 8 + 8
    data[rec_b + 8 : rec_b + 16] = struct.pack(">Q", first)
    head_end = rec_b + 8 + 16
    data[head_end : head_end + 4] = struct.pack(">I", zlib.crc32(bytes(data[rec_b:head_end])))
    with pytest.raises(DbError, match="out of order"):
        dbformats.read_twoskip(bytes(data))


def test_twoskip_error_names_the_file_in_one_line():
    data = twoskipgen.build([(b"k", b"v")])
    with pytest.raises(DbError) as e:
        dbformats.read_twoskip(data[:-30], "/var/lib/cyrus/user/uuid/a/b/ab/seen.db")
    assert str(e.value).startswith("/var/lib/cyrus/user/uuid/a/b/ab/seen.db: ") and "\n" not in str(e.value)
    with pytest.raises(dbformats.NotThisFormat):
        dbformats.read_twoskip(b"\xa1\x02\x8b\x0dskiplist file\0\0\0" + b"\0" * 60)


# -- flat ------------------------------------------------------------------------


@given(st.lists(st.tuples(st.binary(min_size=1, max_size=30), st.binary(max_size=60)), max_size=20))
def test_flat_escaping_round_trip(records):
    data = b"".join(dbformats.flat_encode(k) + b"\t" + dbformats.flat_encode(v) + b"\n" for k, v in records)
    assert b"\0" not in data
    assert dbformats.read_flat(data) == records


def test_flat_reads_like_cyrus():
    # decode(): 0xFF x -> x & 0x7F, a lone trailing 0xFF is dropped
    assert dbformats.read_flat(b"a\xff\x89b\tv\xff\n") == [(b"a\tb", b"v")]
    # strchr(): a key runs to the first TAB, across a line end
    assert dbformats.read_flat(b"abc\ndef\tv\n") == [(b"abc\ndef", b"v")]
    with pytest.raises(DbError, match="no TAB"):
        dbformats.read_flat(b"ab\0c\tv\n")  # a NUL ends the search
    with pytest.raises(DbError, match="no line end"):
        dbformats.read_flat(b"k\tv\nk2\tv2")  # truncated
    with pytest.raises(DbError, match="no TAB"):
        dbformats.read_flat(b"\n")
    assert dbformats.read_flat(b"") == []


@given(st.binary(max_size=400))
@settings(max_examples=400)
def test_flat_garbage_never_crashes(data):
    try:
        dbformats.read_flat(data)
    except DbError:
        pass


# -- counters ----------------------------------------------------------------------


def _counters(version=9, vals=None):
    vals = vals or list(range(1, 36))
    body = struct.pack(">II35QI", 7, version, *vals, 12345)
    return body + struct.pack(">I", zlib.crc32(body))


def test_counters():
    recs = dbformats.read_counters(_counters())
    assert (
        recs[0] == (b"generation", b"7")
        and recs[2] == (b"highestmodseq", b"1")
        and recs[-1] == (b"uidvalidity", b"12345")
    )
    assert len(recs) == 38
    for bad in (_counters()[:-1], _counters(version=8), _counters()[:-4] + b"xxxx"):
        with pytest.raises(DbError):
            dbformats.read_counters(bad)


# -- files -------------------------------------------------------------------------


def test_files_are_opened_without_following_or_blocking(tmp_path):
    real = tmp_path / "secret"
    real.write_bytes(twoskipgen.build([(b"k", b"v")]))
    os.symlink(real, tmp_path / "seen.db")
    os.mkfifo(tmp_path / "sub.db")
    with pytest.raises(safeio.NotRegularFile, match="symlink"):
        dbfiles.read_records(str(tmp_path / "seen.db"), "twoskip")
    with pytest.raises(safeio.NotRegularFile, match="FIFO"):  # O_NONBLOCK: never waits for a writer
        dbfiles.read_records(str(tmp_path / "sub.db"), "flat")
    with pytest.raises(DbError, match="not by the cyrus user"):
        dbfiles.read_records(str(real), "twoskip", uid=os.getuid() + 1)
    assert dbfiles.read_records(str(real), "twoskip", uid=os.getuid()) == [(b"k", b"v")]
    with pytest.raises(DbError, match="larger than"):
        dbfiles.read_records(str(real), "twoskip", limit=10)
    with pytest.raises(dbfiles.NeedsTool):
        dbfiles.read_records(str(real), "skiplist")
    (tmp_path / "skip.db").write_bytes(b"\xa1\x02\x8b\x0dskiplist file\0\0\0" + b"\0" * 60)
    with pytest.raises(dbfiles.NeedsTool):  # cyr_dbtool detects the real format
        dbfiles.read_records(str(tmp_path / "skip.db"), "twoskip")


def _sqlite(path):
    con = sqlite3.connect(path)
    con.executescript(
        "PRAGMA user_version = 14; CREATE TABLE sieve_scripts (id TEXT, name TEXT, content BLOB, active INTEGER);"
    )
    con.execute("INSERT INTO sieve_scripts VALUES (?, ?, ?, 1)", ("s1", "vacation ☀", b"\0\xff keep;"))
    con.execute("INSERT INTO sieve_scripts VALUES (?, ?, ?, 0)", ("s2", "it's", None))
    con.commit()
    return con


def test_sqlite_dump_loads_back(tmp_path):
    _sqlite(str(tmp_path / "dav.db")).close()
    text, rows = dbfiles.dump_sqlite(str(tmp_path / "dav.db"), uid=os.getuid())
    assert rows == 2 and text.startswith(b"PRAGMA user_version = 14;\nBEGIN TRANSACTION;")
    new = sqlite3.connect(str(tmp_path / "new.db"))
    new.executescript(text.decode())
    assert new.execute("PRAGMA user_version").fetchone()[0] == 14
    assert sorted(new.execute("SELECT * FROM sieve_scripts")) == [
        ("s1", "vacation ☀", b"\0\xff keep;", 1),
        ("s2", "it's", None, 0),
    ]
    assert not os.path.exists(str(tmp_path / "dav.db-journal"))


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture], max_examples=60)
@given(st.data())
def test_sqlite_damage_is_refused(tmp_path, data):
    path = str(tmp_path / "dav.db")
    if not os.path.exists(path):
        _sqlite(path).close()
    good = open(path, "rb").read()
    bad = bytearray(good[: data.draw(st.integers(0, len(good)))])
    for pos in data.draw(st.lists(st.integers(0, max(0, len(bad) - 1)), max_size=6)) if bad else ():
        bad[pos] ^= 0xFF
    target = str(tmp_path / "bad.db")
    with open(target, "wb") as f:
        f.write(bytes(bad))
    try:
        dbfiles.dump_sqlite(target)
    except DbError:
        pass


def test_sqlite_hot_journal_and_writer(tmp_path):
    path = str(tmp_path / "dav.db")
    _sqlite(path).close()
    with open(path + "-journal", "wb") as f:
        f.write(b"\xd9\xd5\x05\xf9\x20\xa1\x63\xd7" + b"\1" * 504)  # a journal nobody is writing: hot
    with pytest.raises(DbError, match="hot journal"):
        dbfiles.dump_sqlite(path)
    os.unlink(path + "-journal")
    # a writer in another process in the middle of its transaction (POSIX locks are per process)
    code = (
        "import sqlite3,sys; c=sqlite3.connect(sys.argv[1], isolation_level=None); c.execute('BEGIN EXCLUSIVE');"
        "print('locked', flush=True); sys.stdin.read()"
    )
    w = subprocess.Popen([sys.executable, "-c", code, path], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert w.stdout.readline() == b"locked\n"
        with pytest.raises(DbError, match="held the SQLite lock"):
            dbfiles.dump_sqlite(path, wait=0.2)
    finally:
        w.stdin.close()
        w.wait()
    assert dbfiles.dump_sqlite(path)[1] == 2
