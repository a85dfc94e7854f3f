"""What IMAP clients see: a comparable snapshot of a server's state.

For each user: mailboxes (LIST), subscriptions (LSUB), and per mailbox
UIDVALIDITY, UIDNEXT, every message's UID, flags (incl. per-user \\Seen on
shared folders) and a hash of its bytes, ACL, METADATA and quota.
Used by the demo, the tests and `verify --deep`.
"""

import base64
import hashlib
import imaplib
import re

imaplib.Commands.setdefault("GETMETADATA", ("AUTH", "SELECTED"))
imaplib.Commands.setdefault("SETMETADATA", ("AUTH", "SELECTED"))


def mutf7_encode(s):
    out, buf = [], []

    def flush():
        if buf:
            b = base64.b64encode("".join(buf).encode("utf-16-be")).decode().rstrip("=").replace("/", ",")
            out.append("&" + b + "-")
            buf.clear()

    for ch in s:
        if 0x20 <= ord(ch) <= 0x7E:
            flush()
            out.append("&-" if ch == "&" else ch)
        else:
            buf.append(ch)
    flush()
    return "".join(out)


def mutf7_decode(s):
    def dec(m):
        body = m.group(1)
        if not body:
            return "&"
        b = body.replace(",", "/")
        b += "=" * (-len(b) % 4)
        return base64.b64decode(b).decode("utf-16-be")
    return re.sub(r"&([A-Za-z0-9+,]*)-", dec, s)


def quote(name):
    enc = mutf7_encode(name)
    return '"' + enc.replace("\\", "\\\\").replace('"', '\\"') + '"'


_LIST_RE = re.compile(rb'^\((?P<attrs>[^)]*)\) (?P<sep>"[^"]*"|NIL) (?P<name>.*)$')


def _unquote(b):
    b = b.strip()
    if b.startswith(b'"') and b.endswith(b'"'):
        b = re.sub(rb'\\(.)', rb'\1', b[1:-1])
    return mutf7_decode(b.decode())


def parse_list(data):
    """[(name, attrs)] from LIST/LSUB responses (handles literals)."""
    out = []
    for item in data:
        if item is None:
            continue
        if isinstance(item, tuple):
            head, lit = item
            m = _LIST_RE.match(head.rsplit(b" {", 1)[0] + b" X")
            out.append((mutf7_decode(lit.decode()), m.group("attrs").decode().split() if m else []))
            continue
        m = _LIST_RE.match(item)
        if m:
            out.append((_unquote(m.group("name")), m.group("attrs").decode().split()))
    return out


_FETCH_UID = re.compile(rb"UID (\d+)")
_FETCH_FLAGS = re.compile(rb"FLAGS \(([^)]*)\)")


def fetch_messages(conn):
    typ, data = conn.uid("FETCH", "1:*", "(UID FLAGS RFC822.SIZE BODY.PEEK[])")
    if typ != "OK":
        raise RuntimeError(f"FETCH failed: {data}")
    msgs = {}
    i = 0
    while i < len(data):
        item = data[i]
        if isinstance(item, tuple):
            head, body = item
            tail = data[i + 1] if i + 1 < len(data) and isinstance(data[i + 1], bytes) else b""
            meta = head + b" " + tail
            uid = int(_FETCH_UID.search(meta).group(1))
            fm = _FETCH_FLAGS.search(meta)
            flags = sorted(f for f in (fm.group(1).decode().split() if fm else []) if f != "\\Recent")
            msgs[uid] = {"flags": flags, "size": len(body), "sha256": hashlib.sha256(body).hexdigest()}
            i += 2 if tail else 1
        else:
            i += 1
    return msgs


_TOKEN = re.compile(rb'\s*(?:"((?:[^"\\]|\\.)*)"|(\()|(\))|\{(\d+)\+?\}|([^\s()"{]+))')


def _tokens(parts):
    """Tokens of a response split by imaplib into bytes and (head, literal) tuples."""
    out = []
    for part in parts:
        if isinstance(part, tuple):
            head, lit = part
            out.extend(_tokens([head.rsplit(b"{", 1)[0]]))
            out.append(("str", lit))
            continue
        for m in _TOKEN.finditer(part):
            q, op, cl, _n, atom = m.groups()
            if q is not None:
                out.append(("str", re.sub(rb"\\(.)", rb"\1", q)))
            elif op:
                out.append(("(", None))
            elif cl:
                out.append((")", None))
            elif atom is not None:
                out.append(("nil", None) if atom.upper() == b"NIL" else ("atom", atom))
    return out


VOLATILE = ("/shared/vendor/cmu/cyrus-imapd/", "/private/vendor/cmu/cyrus-imapd/")


def _metadata(conn, name):
    """{entry: value} of the mailbox's METADATA, without Cyrus's own
    computed entries (sizes, CRCs, timestamps) and without NIL values."""
    typ, dat = conn._simple_command("GETMETADATA", "(DEPTH infinity)", quote(name), "(/shared /private)")
    typ, dat = conn._untagged_response(typ, dat, "METADATA")
    toks = [t for t in _tokens([d for d in dat or [] if d is not None])]
    out = {}
    inside = [t for t in toks[toks.index(("(", None)) + 1:]] if ("(", None) in toks else []
    i = 0
    while i + 1 < len(inside) and inside[i][0] != ")":
        key, val = inside[i], inside[i + 1]
        entry = key[1].decode("utf-8", "replace") if key[1] else ""
        if val[0] != "nil" and not entry.startswith(VOLATILE):
            out[entry] = val[1].decode("utf-8", "replace")
        i += 2
    return out


def user_view(conn):
    boxes = {}
    for name, attrs in parse_list(conn.list('""', '"*"')[1]):
        if "\\Noselect" in attrs or "\\NonExistent" in attrs:
            continue
        typ, data = conn.select(quote(name), readonly=True)
        if typ != "OK":
            boxes[name] = {"error": str(data)}
            continue
        st = conn.status(quote(name), "(UIDVALIDITY UIDNEXT MESSAGES)")[1][0].decode()
        uv = int(re.search(r"UIDVALIDITY (\d+)", st).group(1))
        un = int(re.search(r"UIDNEXT (\d+)", st).group(1))
        special = sorted(a for a in attrs if a not in ("\\HasChildren", "\\HasNoChildren", "\\Marked", "\\Unmarked"))
        boxes[name] = {"uidvalidity": uv, "uidnext": un, "special_use": special,
                       "messages": fetch_messages(conn)}
        acl = conn.getacl(quote(name))
        boxes[name]["acl"] = acl[1][0].decode() if acl[0] == "OK" else None
        boxes[name]["metadata"] = _metadata(conn, name)
        conn.close()
    subs = sorted(n for n, _ in parse_list(conn.lsub('""', '"*"')[1]))
    return {"mailboxes": boxes, "subscriptions": subs}


def quota_view(conn, roots):
    out = {}
    for root in roots:
        typ, data = conn.getquota(quote(root))
        out[root] = data[0].decode() if typ == "OK" and data and data[0] else None
    return out


def snapshot(sandbox_or_port, users, quota_roots=(), host="127.0.0.1"):
    """{user: user_view, '#quota': {...}} — two snapshots compare with ==."""
    port = getattr(sandbox_or_port, "port", sandbox_or_port)
    out = {}
    for user in users:
        conn = imaplib.IMAP4(host, port)
        conn.login(user, "x")
        try:
            out[user] = user_view(conn)
        finally:
            conn.logout()
    if quota_roots:
        conn = imaplib.IMAP4(host, port)
        conn.login("cyrus", "x")
        try:
            out["#quota"] = quota_view(conn, quota_roots)
        finally:
            conn.logout()
    return out


def diff(a, b, path=""):
    """Human-readable differences between two snapshots (empty list = equal)."""
    out = []
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b), key=str):
            if k not in a:
                out.append(f"{path}/{k}: only after restore")
            elif k not in b:
                out.append(f"{path}/{k}: missing after restore")
            else:
                out.extend(diff(a[k], b[k], f"{path}/{k}"))
    elif a != b:
        out.append(f"{path}: {a!r} != {b!r}")
    return out


def count(snap):
    boxes = sum(len(v["mailboxes"]) for k, v in snap.items() if not k.startswith("#"))
    msgs = sum(len(m["messages"]) for k, v in snap.items() if not k.startswith("#")
               for m in v["mailboxes"].values() if "messages" in m)
    return boxes, msgs
