"""A minimal twoskip file writer for the unit tier (no Cyrus there): one
committed transaction of sorted records, every record at level 1, as a
freshly checkpointed file looks (format: lib/cyrusdb_twoskip.c's comment).
The readers are proved against real Cyrus files in tests/integration/."""

import struct
import zlib

MAGIC = b"\xa1\x02\x8b\x0dtwoskip file\0\0\0\0"


def _pad(n):
    return (8 - n % 8) % 8


def _record(typ, level, ptrs, key=b"", val=b""):
    head = struct.pack(">BBHI", typ, level, len(key), len(val)) + struct.pack(f">{len(ptrs)}Q", *ptrs)
    tail = key + val + b"\0" * _pad(len(key) + len(val))
    return head + struct.pack(">II", zlib.crc32(head), zlib.crc32(tail)) + tail


def header(num, current, flags=0, version=1):
    h = MAGIC + struct.pack(">IQQQQI", version, 1, num, current, current, flags)
    return h + struct.pack(">I", zlib.crc32(h))


def build(records, tail=b"", dirty=False):
    """Bytes of a twoskip file holding records (sorted, unique keys); tail:
    bytes after the last commit (an uncommitted transaction)."""
    records = sorted(records)
    dummy_len = len(_record(ord("="), 31, [0] * 32))
    offsets = []
    off = 64 + dummy_len
    for k, v in records:
        offsets.append(off)
        off += len(_record(ord("+"), 1, [0, 0], k, v))
    body = _record(ord("="), 31, [offsets[0] if offsets else 0] + [0] * 31)
    for i, (k, v) in enumerate(records):
        nxt = offsets[i + 1] if i + 1 < len(offsets) else 0
        body += _record(ord("+"), 1, [nxt, 0], k, v)
    body += _record(ord("$"), 0, [64 + dummy_len])
    current = 64 + len(body)
    return header(len(records), current, flags=1 if dirty else 0) + body + tail
