"""Binary-safe dumps of Cyrus databases through `cyr_dbtool DB BACKEND batch`.

`cyr_dbtool ... show` is not binary-safe (keys hold \\x1f and NUL). In batch
mode SHOW prints one record per line as `KEY SP VALUE LF`, each an IMAP atom,
quoted string or literal `{n}` / `{n+}` followed by CRLF and n bytes. Reloading
uses `SET {n+}CRLF<key> {n+}CRLF<value>` inside BEGIN/COMMIT (a literal
without '+' makes cyr_dbtool wait for a continuation that never comes).
"""

import re

from borg_cyrus.errors import BorgCyrusError

_ATOM = re.compile(rb"[^ \r\n]*")


class BatchFormatError(BorgCyrusError):
    pass


def _token(data, i):
    c = data[i : i + 1]
    if c == b"{":
        j = data.find(b"}", i)
        if j < 0:
            raise BatchFormatError(f"unterminated literal length at byte {i}")
        spec = data[i + 1 : j].rstrip(b"+")
        if not spec.isdigit():
            raise BatchFormatError(f"bad literal length at byte {i}")
        n = int(spec)
        i = j + 1
        if data[i : i + 2] == b"\r\n":
            i += 2
        elif data[i : i + 1] == b"\n":
            i += 1
        else:
            raise BatchFormatError(f"literal without line end at byte {i}")
        if i + n > len(data):
            raise BatchFormatError(f"literal of {n} bytes truncated at byte {i}")
        return data[i : i + n], i + n
    if c == b'"':
        out = bytearray()
        j = i + 1
        while True:
            if j >= len(data):
                raise BatchFormatError(f"unterminated quoted string at byte {i}")
            ch = data[j : j + 1]
            if ch == b'"':
                return bytes(out), j + 1
            if ch == b"\\":
                j += 1
                ch = data[j : j + 1]
            out += ch
            j += 1
    m = _ATOM.match(data, i)
    word = m.group(0)
    return (b"" if word == b"NIL" else word), m.end()


def iter_records(data):
    """Yield (key, value) byte pairs from SHOW output; raise on truncation."""
    i = 0
    n = len(data)
    while i < n:
        key, i = _token(data, i)
        if data[i : i + 1] != b" ":
            raise BatchFormatError(f"expected a space after a key at byte {i}")
        value, i = _token(data, i + 1)
        if data[i : i + 1] != b"\n":
            raise BatchFormatError(f"expected a line end after a value at byte {i}")
        i += 1
        yield key, value


def parse(data):
    return list(iter_records(data))


def literal(b):
    return b"{%d+}\r\n" % len(b) + b


def load_script(records):
    """Bytes to feed cyr_dbtool batch that write every record in one transaction."""
    parts = [b"BEGIN\n"]
    for k, v in records:
        parts.append(b"SET " + literal(k) + b" " + literal(v) + b"\n")
    parts.append(b"COMMIT\n")
    return b"".join(parts)
