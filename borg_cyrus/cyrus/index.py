"""cyrus.index: the header (message count and bytes, cheap: ~160 bytes per
mailbox, so per-mailbox counts stay O(mailboxes)) and the records (UID,
INTERNALDATE, size, flags and GUID of every message).

Index minor versions by Cyrus release: 13 (3.0), 16 (3.2), 17 (3.4-3.8),
19 (3.10; 18 only in 3.9 development). From imap/mailbox.c of 3.10.2
(mailbox_buf_to_index_header, mailbox_buf_to_index_record) and mailbox.h:
- header: last_uid 28, quota_used 32 (64 bit), uidvalidity 44 in every
  version; `exists` at 84 up to v18, at 60 in v19 ("v19 rearranged fields so
  modseq_t & quota_t fall on 8-byte boundaries"); the header is 160 bytes
  from v14 on (128 in v13) and ends with its CRC32.
- records of v13-v19 keep INTERNALDATE 4 (32-bit seconds since the epoch,
  the date clients show; checked against an IMAP APPEND with an explicit
  date on 3.6's v17), size 12, system flags 32 (\\Answered 1, \\Flagged 2,
  \\Deleted 4, \\Draft 8, \\Seen 16 of the owner), user flags 36 (four words;
  checked against APPENDs of keywords on 3.6) and the GUID (SHA-1 of the
  message file, MESSAGE_GUID_SIZE 20) at 60 (the restore messages tests check
  them over IMAP on 3.6's v17 and 3.10's v19), and end with a CRC32 of the rest
  (112 bytes from v16 on, createdmodseq added; 104 before). v20 (after 3.10)
  moves them (INTERNALDATE 64-bit nanoseconds at 8): not interpreted.
So the archived index is itself the checksum list of the archived messages: a
restore drill can prove every message file present, of the right size and
(--deep) byte-identical without anything recorded at backup time.

Records are untrusted like the rest of an archive (and like the live spool,
which the cyrus user writes): `vet` names the ones no Cyrus writes (UID 0, a
UID in two records), `file_problem` a record that does not describe its file
(another size; another SHA-1 than its GUID). Cyrus itself takes the file as
the truth (reconstruct rewrites a record from its file), so a restore never
trims a file to its record: it leaves such a message out, with one line.
Other versions: the UIDs are still read (offset 0, CRC checked), dates, sizes
and GUIDs are not, and the header is not interpreted.
"""

import hashlib
import struct
import zlib
from collections import Counter
from dataclasses import dataclass

FLAG_EXPUNGED = 1 << 31
FLAG_UNLINKED = 1 << 30
FLAG_ARCHIVED = 1 << 29
FLAG_DELETED = 1 << 2
# the IMAP system flags of a record's system_flags (imap/mailbox.h)
SYSTEM_FLAGS = ((1 << 0, "\\Answered"), (1 << 1, "\\Flagged"), (FLAG_DELETED, "\\Deleted"), (1 << 3, "\\Draft"),
                (1 << 4, "\\Seen"))  # fmt: skip

# record fields: minor version -> {field: offset}
LAYOUTS = {v: {"internaldate": 4, "size": 12, "system_flags": 32, "user_flags": 36, "guid": 60} for v in range(13, 20)}
# header fields: minor version -> {field: offset}
_PRE19 = {"last_uid": 28, "quota_used": 32, "uidvalidity": 44, "exists": 84}
HEADER_LAYOUTS = {**{v: _PRE19 for v in range(13, 19)}, 19: {**_PRE19, "exists": 60}}


class IndexError_(ValueError):
    pass


@dataclass(frozen=True)
class Record:
    uid: int
    size: int | None
    system_flags: int | None
    guid: bytes | None
    internaldate: int | None = None  # seconds since the epoch
    user_flags: int = 0  # bit i: the i-th name of cyrus.header's U list

    @property
    def expunged(self):
        return bool(self.system_flags and self.system_flags & (FLAG_EXPUNGED | FLAG_UNLINKED))

    @property
    def archived(self):
        return bool(self.system_flags and self.system_flags & FLAG_ARCHIVED)


@dataclass(frozen=True)
class Index:
    minor_version: int
    uidvalidity: int
    last_uid: int
    exists: int
    records: tuple

    @property
    def detailed(self):
        return self.minor_version in LAYOUTS

    def live(self):
        """Records of messages that exist (not expunged)."""
        return [r for r in self.records if not r.expunged]


def parse(data, path="cyrus.index"):
    if len(data) < 96:
        raise IndexError_(f"{path}: too short for a cyrus.index ({len(data)} bytes)")
    minor, start, rsize, nrec = struct.unpack_from(">IIII", data, 8)
    if start < 96 or rsize < 8 or start > len(data):
        raise IndexError_(f"{path}: implausible header (start {start}, record size {rsize})")
    if zlib.crc32(data[: start - 4]) != struct.unpack_from(">I", data, start - 4)[0]:
        raise IndexError_(f"{path}: header checksum mismatch")
    if len(data) < start + nrec * rsize:
        raise IndexError_(f"{path}: truncated ({nrec} records announced, {(len(data) - start) // rsize} present)")
    lay = LAYOUTS.get(minor)
    if lay and rsize < lay["guid"] + 20 + 4:  # a forged header: records too short for their fields
        raise IndexError_(f"{path}: implausible record size {rsize} for version {minor}")
    recs = []
    for i in range(nrec):
        off = start + i * rsize
        rec = data[off : off + rsize]
        if zlib.crc32(rec[:-4]) != struct.unpack_from(">I", rec, rsize - 4)[0]:
            raise IndexError_(f"{path}: record {i + 1} checksum mismatch")
        uid = struct.unpack_from(">I", rec, 0)[0]
        if lay:
            recs.append(
                Record(
                    uid,
                    struct.unpack_from(">I", rec, lay["size"])[0],
                    struct.unpack_from(">I", rec, lay["system_flags"])[0],
                    rec[lay["guid"] : lay["guid"] + 20],
                    struct.unpack_from(">I", rec, lay["internaldate"])[0],
                    _user_flags(rec, lay["user_flags"]),
                )
            )
        else:
            recs.append(Record(uid, None, None, None))
    hl = HEADER_LAYOUTS.get(minor, _PRE19)
    return Index(
        minor,
        struct.unpack_from(">I", data, hl["uidvalidity"])[0],
        struct.unpack_from(">I", data, hl["last_uid"])[0],
        struct.unpack_from(">I", data, hl["exists"])[0],
        tuple(recs),
    )


def vet(records):
    """(the records a Cyrus could have written, [(uid, problem)] of the others): UID 0 (Cyrus numbers
    messages from 1) and a UID in more than one record (every record of it: which one describes the
    file cannot be told). O(records)."""
    records = list(records)
    count = Counter(r.uid for r in records)
    good, bad, told = [], [], set()
    for r in records:
        if r.uid == 0:
            bad.append((0, "Cyrus numbers messages from 1"))
        elif count[r.uid] > 1:
            if r.uid not in told:
                told.add(r.uid)
                bad.append((r.uid, f"it is in {count[r.uid]} index records"))
        else:
            good.append(r)
    return good, bad


def unlinked(r):
    """A record whose message file Cyrus has deleted (not a message any more)."""
    return bool(r.system_flags and r.system_flags & FLAG_UNLINKED)


def file_problem(rec, size, data=None):
    """Why the message file of size bytes (and content data, if read) is not the one rec describes,
    or None. A GUID of all zeros (none recorded) is not compared."""
    if rec.size is not None and size != rec.size:
        return f"its file is {size} bytes, its index record says {rec.size}"
    if data is not None and rec.guid and any(rec.guid) and hashlib.sha1(data).digest() != rec.guid:
        return "its file's SHA-1 is not the GUID of its index record"
    return None


def rewrite_flags(path, change):
    """Rewrite the system flags of a (staged) cyrus.index in place, record CRCs kept right:
    change(uid, flags) -> new flags. Returns the number of records changed."""
    n = 0
    with open(path, "r+b") as f:
        data = bytearray(f.read())
        minor, start, rsize, nrec = struct.unpack_from(">IIII", data, 8)
        off_flags = LAYOUTS[minor]["system_flags"]
        for i in range(nrec):
            off = start + i * rsize
            uid = struct.unpack_from(">I", data, off)[0]
            flags = struct.unpack_from(">I", data, off + off_flags)[0]
            new = change(uid, flags)
            if new != flags:
                n += 1
                struct.pack_into(">I", data, off + off_flags, new)
                struct.pack_into(">I", data, off + rsize - 4, zlib.crc32(bytes(data[off : off + rsize - 4])))
        f.seek(0)
        f.write(data)
    return n


def _user_flags(rec, off):
    """MAX_USER_FLAGS (128) bits in four 32-bit words, word k holding flags 32k..32k+31."""
    words = struct.unpack_from(">IIII", rec, off)
    return sum(w << (32 * k) for k, w in enumerate(words))


def read(path):
    from borg_cyrus.safety import safeio

    return parse(safeio.read_bytes(path), path)


HEADER_BYTES = 96
HEADER_VERSIONS = tuple(HEADER_LAYOUTS)  # 13-19: Cyrus 3.0-3.10


@dataclass(frozen=True)
class IndexHeader:
    minor_version: int
    num_records: int
    last_uid: int
    quota_used: int  # bytes of non-expunged messages
    uidvalidity: int
    exists: int  # non-expunged messages


def inspect(path):
    """(IndexHeader or None, problem or None) of the cyrus.index at path.

    Never blocks (a FIFO or device there is a problem, not a hang) and never
    follows a symlink. A missing file is (None, None); an index of a version
    whose header is not known is (None, None) too. A problem is a phrase:
    truncated, checksum mismatch, not a regular file."""
    from borg_cyrus.safety import safeio

    try:
        data, size = safeio.read_head(path, 1024)
    except FileNotFoundError:
        return None, None
    except safeio.NotRegularFile as e:
        return None, f"cyrus.index is {e.kind}, not a regular file (not read)"
    except OSError as e:
        return None, f"cyrus.index cannot be read ({e.strerror})"
    if len(data) < HEADER_BYTES:
        return None, f"cyrus.index is truncated ({size} bytes, shorter than its header)"
    minor, start, rsize, nrec = struct.unpack_from(">IIII", data, 8)
    hl = HEADER_LAYOUTS.get(minor)
    if hl is None:
        return None, None
    hdr = IndexHeader(
        minor_version=minor,
        num_records=nrec,
        last_uid=struct.unpack_from(">I", data, hl["last_uid"])[0],
        quota_used=struct.unpack_from(">Q", data, hl["quota_used"])[0],
        uidvalidity=struct.unpack_from(">I", data, hl["uidvalidity"])[0],
        exists=struct.unpack_from(">I", data, hl["exists"])[0],
    )
    if (
        HEADER_BYTES <= start <= len(data)
        and zlib.crc32(data[: start - 4]) != struct.unpack_from(">I", data, start - 4)[0]
    ):
        return hdr, "cyrus.index header checksum mismatch"
    if rsize and size < start + nrec * rsize:
        return hdr, (f"cyrus.index is truncated ({nrec} records announced, {max(0, size - start) // rsize} present)")
    return hdr, None


def read_header(path):
    """IndexHeader of the cyrus.index at path, or None if absent/unsupported/damaged."""
    hdr, problem = inspect(path)
    return None if problem else hdr
