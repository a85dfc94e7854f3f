"""cyrus.header (Cyrus 3.x): read and write the dlist that names a mailbox.

The file is three magic lines followed by one dlist:
  %(T e N user.alice I <uniqueid> Q user.alice A %(alice lrswipkxtecdan) U ($Important))
T mbtype, N internal name, I uniqueid, Q quota root, A ACL, U user flags.
`reconstruct -P <dir>/cyrus.header` registers the mailbox it describes, so a
header written here is how a restored copy gets a new name and identity.
"""

import re

MAGIC = (
    b"\xa1\x02\x8b\rCyrus mailbox header\n"
    b"\"The best thing about this system was that it had lots of goals.\"\n"
    b"\t--Jim Morris on Andrew\n"
)


class HeaderError(ValueError):
    pass


_ATOM_OK = re.compile(rb"^[A-Za-z0-9.&^!@_+\-:/$=,~#*'`|?<>\[\]]+$")


def _parse(data, i):
    """(value, next index): kvlist -> dict, list -> list, atom/string -> bytes."""
    while data[i : i + 1] == b" ":
        i += 1
    c = data[i : i + 1]
    if data[i : i + 2] == b"%(":
        out = {}
        i += 2
        while True:
            while data[i : i + 1] == b" ":
                i += 1
            if data[i : i + 1] == b")":
                return out, i + 1
            if i >= len(data):
                raise HeaderError("unterminated %( in cyrus.header")
            key, i = _parse(data, i)
            val, i = _parse(data, i)
            out[key.decode("utf-8", "surrogateescape")] = val
    if c == b"(":
        out = []
        i += 1
        while True:
            while data[i : i + 1] == b" ":
                i += 1
            if data[i : i + 1] == b")":
                return out, i + 1
            if i >= len(data):
                raise HeaderError("unterminated ( in cyrus.header")
            val, i = _parse(data, i)
            out.append(val)
    if c == b'"':
        buf = bytearray()
        j = i + 1
        while j < len(data):
            ch = data[j : j + 1]
            if ch == b'"':
                return bytes(buf), j + 1
            if ch == b"\\":
                j += 1
                ch = data[j : j + 1]
            buf += ch
            j += 1
        raise HeaderError("unterminated quoted string in cyrus.header")
    if c == b"{":
        j = data.index(b"}", i)
        n = int(data[i + 1 : j].rstrip(b"+"))
        j += 1
        if data[j : j + 2] == b"\r\n":
            j += 2
        elif data[j : j + 1] == b"\n":
            j += 1
        return data[j : j + n], j + n
    m = re.compile(rb"[^ ()\r\n]*").match(data, i)
    word = m.group(0)
    if not word:
        raise HeaderError(f"unexpected {data[i : i + 10]!r} in cyrus.header")
    return (b"" if word == b"NIL" else word), m.end()


def parse(data):
    """{T, N, I, Q, A: {id: rights}, U: [flags]} (str values) of cyrus.header bytes."""
    if not data.startswith(MAGIC[:4]):
        raise HeaderError("not a cyrus.header (bad magic)")
    body = data[len(MAGIC) :] if data.startswith(MAGIC) else data.split(b"\n", 3)[-1]
    body = body.strip()
    if not body.startswith(b"%("):
        raise HeaderError("cyrus.header is not in the Cyrus 3 (dlist) format")
    kv, _ = _parse(body, 0)

    def s(v):
        return v.decode("utf-8", "surrogateescape") if isinstance(v, bytes) else v

    out = {k: s(v) for k, v in kv.items() if isinstance(v, bytes)}
    acl = kv.get("A") or {}
    out["A"] = {k: s(v) for k, v in acl.items()} if isinstance(acl, dict) else {}
    flags = kv.get("U") or []
    out["U"] = [s(f) for f in flags] if isinstance(flags, list) else []
    return out


def read(path):
    with open(path, "rb") as f:
        return parse(f.read())


def _atom(value):
    b = value.encode("utf-8", "surrogateescape") if isinstance(value, str) else value
    if b and _ATOM_OK.match(b) and b != b"NIL":
        return b
    if b"\r" in b or b"\n" in b or b"\0" in b:
        return b"{%d+}\r\n" % len(b) + b
    return b'"' + b.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'


def render(mbtype, name, uniqueid, acl, quotaroot=None, user_flags=()):
    """cyrus.header bytes for a mailbox (acl: {identifier: rights})."""
    parts = [b"T", _atom(mbtype or "e"), b"N", _atom(name), b"I", _atom(uniqueid)]
    if quotaroot:
        parts += [b"Q", _atom(quotaroot)]
    parts += [b"A", b"%(" + b" ".join(_atom(k) + b" " + _atom(v) for k, v in acl.items()) + b")"]
    if user_flags:
        parts += [b"U", b"(" + b" ".join(_atom(f) for f in user_flags) + b")"]
    return MAGIC + b"%(" + b" ".join(parts) + b")\n"
