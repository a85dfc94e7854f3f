"""Cyrus's database files read as root without trusting them.

The cyrus user writes every file read here, so each is opened with safeio
(the last component never followed, FIFOs and devices never opened
blocking), must be a regular file owned by the cyrus user (a directory
symlink planted on the way cannot lead to another user's file), and is read
whole into memory (a file truncated under a map would kill the reader) up
to LIMIT bytes. Nothing here writes to a database.

- read_records(): twoskip and flat through dbformats; NeedsTool for any
  other backend (or a twoskip-configured file in another format, which
  cyr_dbtool detects), so the caller runs `cyr_dbtool ... batch`.
- dump_sqlite(): a per-user dav.db (or caldav_alarm.sqlite3) as SQL text.
  SQLite never gets the path (it would follow symlinks and create journal
  files): the bytes are read under SQLite's own shared lock (fcntl on the
  lock bytes, so no writer is between pages), refused when a hot journal or
  a WAL file says the main file alone is not the database, then deserialized
  into an in-memory database and written with iterdump() (after a
  `PRAGMA user_version` line: Cyrus upgrades its schema by that number).
- read_counters(): the per-user counters file through dbformats.
"""

import errno
import fcntl
import os
import sqlite3
import time

from borg_cyrus.cyrus import dbformats
from borg_cyrus.cyrus.dbformats import DbError
from borg_cyrus.safety import safeio

LIMIT = 1 << 30
PURE_BACKENDS = ("twoskip", "flat")

# SQLite's unix locking protocol (os_unix.c): lock bytes at 1 GiB
_PENDING = 0x40000000
_RESERVED = _PENDING + 1
_SHARED_FIRST = _PENDING + 2
_SHARED_SIZE = 510
_SQLITE_MAGIC = b"SQLite format 3\0"


class NeedsTool(Exception):
    """No pure-Python reader for this file: read it with cyr_dbtool."""


def open_checked(path, uid=None):
    """(fd, stat) of the regular file at path, owned by uid (if given)."""
    fd = safeio.open_regular(path)
    st = os.fstat(fd)
    if uid is not None and st.st_uid != uid:
        os.close(fd)
        raise DbError(f"{path} is owned by uid {st.st_uid}, not by the cyrus user; not read")
    return fd, st


def _read_fd(fd, size, path, limit):
    if size > limit:
        raise DbError(f"{path}: {size} bytes, larger than {limit}; not read")
    first = os.pread(fd, size + 1, 0)  # one read for the usual small file
    if len(first) <= size:
        return first
    chunks = [first]  # it grew while read: read on, up to the limit
    off = len(first)
    while off <= limit:
        b = os.pread(fd, min(1 << 24, limit + 1 - off), off)
        if not b:
            return b"".join(chunks)
        chunks.append(b)
        off += len(b)
    raise DbError(f"{path}: grew past {limit} bytes while read; not read")


def read_file(path, uid=None, limit=LIMIT):
    fd, st = open_checked(path, uid)
    try:
        return _read_fd(fd, st.st_size, path, limit)
    finally:
        os.close(fd)


def check_file(path, uid=None):
    """Refuse what read_file would refuse, without reading (before cyr_dbtool gets the path)."""
    fd, _st = open_checked(path, uid)
    os.close(fd)


def read_records(path, backend, uid=None, limit=LIMIT):
    """(key, value) records of a twoskip or flat file; NeedsTool otherwise."""
    if backend not in PURE_BACKENDS:
        raise NeedsTool(backend)
    data = read_file(path, uid, limit)
    if backend == "flat":
        return dbformats.read_flat(data, path)
    try:
        return dbformats.read_twoskip(data, path)
    except dbformats.NotThisFormat:
        raise NeedsTool("not twoskip") from None


def read_counters(path, uid=None):
    return dbformats.read_counters(read_file(path, uid, 4096), path)


# -- SQLite ------------------------------------------------------------------------


def _try_lock(fd, start, length):
    try:
        fcntl.lockf(fd, fcntl.LOCK_SH | fcntl.LOCK_NB, length, start)
        return True
    except OSError as e:
        if e.errno in (errno.EAGAIN, errno.EACCES):
            return False
        raise


def _shared_lock(fd, path, wait):
    """SQLite's SHARED lock (PENDING read-locked while SHARED is taken)."""
    deadline = time.monotonic() + wait
    while True:
        if _try_lock(fd, _PENDING, 1):
            ok = _try_lock(fd, _SHARED_FIRST, _SHARED_SIZE)
            fcntl.lockf(fd, fcntl.LOCK_UN, 1, _PENDING)
            if ok:
                return
        if time.monotonic() >= deadline:
            raise DbError(f"{path}: a writer held the SQLite lock for {wait:.0f} s; not read")
        time.sleep(0.02)


def _nonempty(path):
    try:
        head, size = safeio.read_head(path, 32)
    except FileNotFoundError:
        return False
    except safeio.NotRegularFile:
        return True
    return size > 0 and any(head)


def _read_sqlite(path, uid, wait, limit):
    fd, st = open_checked(path, uid)
    try:
        _shared_lock(fd, path, wait)
        if _nonempty(path + "-journal"):
            # a writer holding RESERVED is still writing its journal, not the file: the read is consistent;
            # with nobody holding it the journal is hot (an interrupted write): the file alone is torn
            if _try_lock(fd, _RESERVED, 1):
                raise DbError(f"{path}: has a hot journal (an interrupted write Cyrus rolls back on open); not read")
        data = _read_fd(fd, st.st_size, path, limit)
    finally:
        os.close(fd)  # drops every lock of this process on the file
    if data[:16] != _SQLITE_MAGIC:
        raise DbError(f"{path}: not an SQLite 3 database")
    if data[18:20] == b"\x02\x02" and _nonempty(path + "-wal"):
        raise DbError(f"{path}: in WAL mode with a non-empty -wal file; not read")
    return data


def dump_sqlite(path, uid=None, wait=2.0, limit=LIMIT):
    """(SQL text bytes, rows) of the SQLite database at path."""
    data = _read_sqlite(path, uid, wait, limit)
    con = sqlite3.connect(":memory:")
    try:
        con.text_factory = lambda b: b.decode("utf-8", "surrogateescape")  # keep bytes that are not UTF-8
        con.deserialize(data)
        con.execute("PRAGMA trusted_schema = OFF")
        # iterdump() leaves out user_version, which Cyrus's sqldb_open() upgrades by
        lines = [f"PRAGMA user_version = {con.execute('PRAGMA user_version').fetchone()[0]};", *con.iterdump()]
    except sqlite3.Error as e:
        raise DbError(f"{path}: SQLite cannot read it ({e}); not dumped") from None
    finally:
        con.close()
    rows = sum(1 for ln in lines if ln.startswith("INSERT INTO "))
    return ("\n".join(lines) + "\n").encode("utf-8", "surrogateescape"), rows
