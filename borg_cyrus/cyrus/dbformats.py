"""Read-only, pure-Python readers of Cyrus's default database formats.

Each reader takes the bytes of one file and returns its records, a list of
(key, value) byte pairs, exactly as `cyr_dbtool FILE BACKEND batch` + SHOW
would list them, without writing anything (cyr_dbtool recovers a dirty
twoskip file in place; these readers compute the same answer on a copy in
memory). The files are written by the cyrus user: damaged or crafted input
raises DbError, one line naming the file, and never loops or crashes.

twoskip (lib/cyrusdb_twoskip.c, Cyrus 3.x): a 64-byte header (magic,
version, generation, num_records, repack_size, current_size, flags, CRC32)
and 8-byte-aligned records (type, level, key and value lengths, level+1
forward pointers, head and tail CRC32, key, value, padding). Level 0 has two
pointers; a reader takes the higher one below `current_size` (the size at
the last commit), so an uncommitted tail (a crash or a writer in progress)
is ignored, as Cyrus's recovery1 does. '-' records mark deletions. A file
whose committed chain cannot be read (truncated below current_size, a bad
checksum, keys out of order) is refused: Cyrus would then try its recovery2
salvage, which this reader does not imitate.

flat (lib/cyrusdb_flat.c): `key TAB value LF` lines in file order; bytes
NUL, TAB, CR, LF are written as 0xFF, byte|0x80, and 0xFF as 0xFF 0xFF.
Like Cyrus, a key runs to the first TAB (even across a LF) and a NUL byte
ends the search; a line without its TAB or LF is damage.

counters (imap/mboxname.c, MV_VERSION 9): the per-user modseq counters, a
fixed 296-byte record with a CRC32, listed as (field name, decimal value).
"""

import struct
import zlib

from borg_cyrus.errors import BorgCyrusError


class DbError(BorgCyrusError):
    """A database file that cannot be read as its format (damaged or crafted)."""


class NotThisFormat(DbError):
    """The file is not in the format asked for (e.g. a skiplist file where twoskip is configured)."""


# -- twoskip -----------------------------------------------------------------

TWOSKIP_MAGIC = b"\xa1\x02\x8b\x0dtwoskip file\0\0\0\0"
_HEADER = struct.Struct(">20sIQQQQII")
_HEADER_SIZE = 64
_DUMMY_OFFSET = 64
_MAXLEVEL = 31
_DIRTY = 1
_RECORD, _DELETE = 0x2B, 0x2D  # '+', '-'
_HEAD = struct.Struct(">BBHI")


class _Rec:
    __slots__ = ("offset", "type", "ptrs", "crc_tail", "keyoff", "keylen", "vallen")


def _roundup8(n):
    return (n + 7) & ~7


def _read_record(data, off, name):
    """The record at off (head CRC checked), as read_onerecord() does."""
    size = len(data)
    if off + 24 > size:
        raise DbError(f"{name}: record at offset {off} runs past the end of the file ({size} bytes): truncated")
    typ, level, keylen, vallen = _HEAD.unpack_from(data, off)
    p = off + 8
    if level > _MAXLEVEL:
        raise DbError(f"{name}: record at offset {off} has level {level} (at most {_MAXLEVEL}): damaged")
    if keylen == 0xFFFF:
        (keylen,) = struct.unpack_from(">Q", data, p)
        p += 8
    if vallen == 0xFFFFFFFF:
        (vallen,) = struct.unpack_from(">Q", data, p)
        p += 8
    ptrs_end = p + 8 * (level + 1)
    if ptrs_end + 8 + _roundup8(keylen + vallen) > size:
        raise DbError(f"{name}: record at offset {off} runs past the end of the file ({size} bytes): truncated")
    r = _Rec()
    r.offset, r.type, r.keylen, r.vallen = off, typ, keylen, vallen
    r.ptrs = struct.unpack_from(f">{level + 1}Q", data, p)
    crc_head, r.crc_tail = struct.unpack_from(">II", data, ptrs_end)
    if zlib.crc32(data[off:ptrs_end]) != crc_head:
        raise DbError(f"{name}: record at offset {off} fails its head checksum: damaged")
    r.keyoff = ptrs_end + 8
    return r


def _next0(ptrs, end):
    """_getloc(level 0): the higher of the two level-0 pointers below end."""
    a = ptrs[0]
    b = ptrs[1] if len(ptrs) > 1 else 0
    if a >= end:
        return b
    if b >= end:
        return a
    return max(a, b)


def read_twoskip(data, name="twoskip database"):
    """Records of a twoskip file, in key order, as committed."""
    size = len(data)
    if size == 0:
        return []  # Cyrus writes a fresh header into an empty file: no records
    if size < _HEADER_SIZE:
        raise DbError(f"{name}: {size} bytes, too short for a twoskip header: damaged")
    magic, version, _gen, _num, _repack, current, flags, crc = _HEADER.unpack_from(data, 0)
    if magic != TWOSKIP_MAGIC:
        raise NotThisFormat(f"{name}: not a twoskip file")
    if version > 1:
        raise DbError(f"{name}: twoskip version {version} is newer than this reader (1)")
    if zlib.crc32(data[:60]) != crc:
        raise DbError(f"{name}: twoskip header fails its checksum: damaged")
    if current <= _HEADER_SIZE:
        raise DbError(f"{name}: twoskip header gives a committed size of {current} bytes: damaged")
    end = current  # pointers at or past the last commit are an uncommitted tail
    dummy = _read_record(data, _DUMMY_OFFSET, name)
    out = []
    prev = None
    mv = memoryview(data)
    off = _next0(dummy.ptrs, end)
    while off:
        if off >= end:
            raise DbError(f"{name}: a pointer leads past the last commit (offset {off}): damaged or changed while read")
        r = _read_record(data, off, name)
        if r.type == _DELETE:  # read_skipdelete(): a deletion points on to the next live record
            off = r.ptrs[0]
            if not off:
                break
            r = _read_record(data, off, name)
        if r.type != _RECORD:
            raise DbError(f"{name}: record at offset {off} has type {r.type:#04x} inside the chain: damaged")
        kv = _roundup8(r.keylen + r.vallen)
        if zlib.crc32(mv[r.keyoff : r.keyoff + kv]) != r.crc_tail:
            raise DbError(f"{name}: record at offset {off} fails its tail checksum: damaged")
        key = data[r.keyoff : r.keyoff + r.keylen]
        if prev is not None and key <= prev:
            raise DbError(f"{name}: keys out of order at offset {off}: damaged")
        out.append((key, data[r.keyoff + r.keylen : r.keyoff + r.keylen + r.vallen]))
        prev = key
        off = _next0(r.ptrs, end)
    return out


def is_twoskip(head):
    return head[:20] == TWOSKIP_MAGIC


# -- flat ----------------------------------------------------------------------


def flat_decode(s):
    """lib/cyrusdb_flat.c decode(): 0xFF 0xFF is 0xFF, 0xFF x is x & 0x7F, a
    trailing lone 0xFF is dropped."""
    if b"\xff" not in s:
        return s
    out = bytearray()
    i, n = 0, len(s)
    while i < n:
        c = s[i]
        if c == 0xFF:
            if i + 1 >= n:
                break
            i += 1
            c = s[i]
            out.append(0xFF if c == 0xFF else c & 0x7F)
        else:
            out.append(c)
        i += 1
    return bytes(out)


def flat_encode(s):
    """lib/cyrusdb_flat.c encode() (for tests and restores)."""
    out = bytearray()
    for c in s:
        if c in (0, 9, 10, 13):
            out += bytes((0xFF, 0x80 | c))
        elif c == 0xFF:
            out += b"\xff\xff"
        else:
            out.append(c)
    return bytes(out)


def read_flat(data, name="flat database"):
    """Records of a flat file, in file order (foreach() over the whole file)."""
    out = []
    n = len(data)
    p = 0
    nul = -1
    while p < n:
        if nul < p:  # strchr() stops at a NUL (and at the end of the map)
            nul = data.find(b"\0", p)
            if nul < 0:
                nul = n
        tab = data.find(b"\t", p, nul)
        if tab < 0:
            raise DbError(f"{name}: the entry at byte {p} has no TAB: damaged")
        nl = data.find(b"\n", tab + 1, nul)
        if nl < 0:
            raise DbError(f"{name}: the entry at byte {p} has no line end: damaged or truncated")
        out.append((flat_decode(data[p:tab]), flat_decode(data[tab + 1 : nl])))
        p = nl + 1
    return out


# -- counters --------------------------------------------------------------------

COUNTER_FIELDS = (
    "highestmodseq mailmodseq caldavmodseq carddavmodseq notesmodseq mailfoldersmodseq caldavfoldersmodseq "
    "carddavfoldersmodseq notesfoldersmodseq quotamodseq raclmodseq submissionmodseq submissionfoldersmodseq "
    "maildeletedmodseq caldavdeletedmodseq carddavdeletedmodseq notesdeletedmodseq submissiondeletedmodseq "
    "mailfoldersdeletedmodseq caldavfoldersdeletedmodseq carddavfoldersdeletedmodseq notesfoldersdeletedmodseq "
    "submissionfoldersdeletedmodseq davnotificationmodseq davnotificationdeletedmodseq "
    "davnotificationfoldersmodseq davnotificationfoldersdeletedmodseq jmapnotificationmodseq "
    "jmapnotificationdeletedmodseq jmapnotificationfoldersmodseq jmapnotificationfoldersdeletedmodseq "
    "sievemodseq sievedeletedmodseq sievefoldersmodseq sievefoldersdeletedmodseq"
).split()
_COUNTERS = struct.Struct(">II" + "Q" * len(COUNTER_FIELDS) + "II")  # generation, version, ..., uidvalidity, crc


def read_counters(data, name="counters file"):
    """(field, decimal value) records of a version-9 counters file."""
    if len(data) != _COUNTERS.size:
        raise DbError(f"{name}: {len(data)} bytes, not a version-9 counters file ({_COUNTERS.size} bytes)")
    vals = _COUNTERS.unpack(data)
    if vals[1] != 9:
        raise DbError(f"{name}: counters version {vals[1]}, this reader knows 9")
    if zlib.crc32(data[: _COUNTERS.size - 4]) != vals[-1]:
        raise DbError(f"{name}: counters fail their checksum: damaged")
    names = ["generation", "version", *COUNTER_FIELDS, "uidvalidity"]
    return [(k.encode(), str(v).encode()) for k, v in zip(names, vals[:-1])]
