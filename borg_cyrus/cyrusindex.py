"""Read the header of a mailbox's cyrus.index: message count and bytes, cheaply.

Reading ~100 bytes per mailbox keeps per-mailbox counts O(mailboxes), not
O(messages). Offsets are those of index minor versions 13-19 (Cyrus 3.0-3.6);
other versions return None rather than a guess.
"""

import struct
from dataclasses import dataclass

HEADER_BYTES = 96
SUPPORTED = range(13, 20)


@dataclass(frozen=True)
class IndexHeader:
    minor_version: int
    num_records: int
    last_uid: int
    quota_used: int      # bytes of non-expunged messages
    uidvalidity: int
    exists: int          # non-expunged messages


def read(path):
    """IndexHeader of the cyrus.index at path, or None if absent/unsupported."""
    try:
        with open(path, "rb") as f:
            data = f.read(HEADER_BYTES)
    except OSError:
        return None
    if len(data) < HEADER_BYTES:
        return None
    minor = struct.unpack_from(">I", data, 8)[0]
    if minor not in SUPPORTED:
        return None
    return IndexHeader(
        minor_version=minor,
        num_records=struct.unpack_from(">I", data, 20)[0],
        last_uid=struct.unpack_from(">I", data, 28)[0],
        quota_used=struct.unpack_from(">Q", data, 32)[0],
        uidvalidity=struct.unpack_from(">I", data, 44)[0],
        exists=struct.unpack_from(">I", data, 84)[0],
    )
