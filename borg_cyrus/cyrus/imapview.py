"""What IMAP clients see: a comparable snapshot of a server's state.

For each user: mailboxes (LIST), subscriptions (LSUB), and per mailbox
UIDVALIDITY, UIDNEXT, every message's UID, flags (incl. per-user \\Seen on
shared folders) and a hash of its bytes, ACL, METADATA and quota; and the
user's Sieve scripts as a ManageSieve client sees them.
Used by the demo and the tests.
"""

import base64
import hashlib
import imaplib
import re
import socket

from borg_cyrus.errors import BorgCyrusError

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


def served_sha1(conn, uids, batch=100):
    """{uid: SHA-1 digest of the bytes served} for the selected mailbox."""
    got = {}
    for i in range(0, len(uids), batch):
        typ, data = conn.uid("FETCH", ",".join(map(str, uids[i : i + batch])), "(UID BODY.PEEK[])")
        for item in data or []:
            if isinstance(item, tuple):
                got[int(_FETCH_UID.search(item[0]).group(1))] = hashlib.sha1(item[1]).digest()
    return got


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
    inside = [t for t in toks[toks.index(("(", None)) + 1 :]] if ("(", None) in toks else []
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
        boxes[name] = {"uidvalidity": uv, "uidnext": un, "special_use": special, "messages": fetch_messages(conn)}
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


def sieve_view(host, port, user):
    """The user's Sieve scripts as a ManageSieve client sees them (a
    ManageSieve login creates the user's #sieve mailbox: see has_sieve)."""
    try:
        ms = ManageSieve(host, port).login(user, "x")
    except (OSError, ManageSieveError) as e:
        return {"error": str(e)}
    try:
        listed = ms.listscripts()
        scripts = {name: ms.getscript(name).decode("utf-8", "replace") for name in sorted(listed)}
        return {"scripts": scripts, "active": [n for n, on in sorted(listed.items()) if on]}
    finally:
        ms.logout()


def has_sieve(host, port, users):
    """{user: whether the admin's LIST shows user/NAME/#sieve} (Cyrus 3.6
    keeps ManageSieve uploads there; users' own LIST hides it)."""
    conn = imaplib.IMAP4(host, port)
    conn.login("cyrus", "x")
    try:
        names = {n for n, _ in parse_list(conn.list('""', '"user/*"')[1])}
    finally:
        conn.logout()
    out = {}
    for user in users:
        local, at, domain = user.partition("@")
        out[user] = f"user/{local}/#sieve{at}{domain}" in names
    return out


def snapshot(sandbox_or_port, users, quota_roots=(), host="127.0.0.1"):
    """{user: user_view, '#quota': {...}} — two snapshots compare with ==.
    Given a Sandbox with ManageSieve, each user view also holds 'sieve'."""
    port = getattr(sandbox_or_port, "port", sandbox_or_port)
    sieve_port = getattr(sandbox_or_port, "sieve_port", None)
    with_sieve = has_sieve(host, port, users) if sieve_port else {}
    out = {}
    for user in users:
        conn = imaplib.IMAP4(host, port)
        conn.login(user, "x")
        try:
            out[user] = user_view(conn)
        finally:
            conn.logout()
        if sieve_port:
            out[user]["sieve"] = (
                sieve_view(host, sieve_port, user) if with_sieve[user] else {"scripts": {}, "active": []}
            )
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
    msgs = sum(
        len(m["messages"])
        for k, v in snap.items()
        if not k.startswith("#")
        for m in v["mailboxes"].values()
        if "messages" in m
    )
    return boxes, msgs


class ManageSieveError(BorgCyrusError):
    pass


def _sieve_string(text):
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


class ManageSieve:
    """Minimal ManageSieve client (RFC 5804): PLAIN login, PUTSCRIPT,
    SETACTIVE, LISTSCRIPTS, GETSCRIPT, LOGOUT."""

    def __init__(self, host, port, timeout=10):
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.file = self.sock.makefile("rb")
        self.capabilities = self._response("greeting")

    def _line(self):
        line = self.file.readline()
        if not line:
            raise ManageSieveError("ManageSieve server closed the connection")
        return line.rstrip(b"\r\n")

    def _response(self, what):
        """Lines (literals inlined as bytes) up to OK; NO/BYE raise."""
        lines = []
        while True:
            line = self._line()
            word = line.split(b" ", 1)[0].upper()
            if line.endswith(b"}") and b"{" in line:
                head, n = line.rsplit(b"{", 1)
                line = head + self.file.read(int(n[:-1].rstrip(b"+"))) + self._line()
            if word == b"OK":
                return lines
            if word in (b"NO", b"BYE"):
                raise ManageSieveError(f"ManageSieve {what}: {line.decode('utf-8', 'replace')}")
            lines.append(line)

    def command(self, text, literal=None, what=None):
        data = text.encode()
        if literal is not None:
            data += b" {%d+}\r\n" % len(literal) + literal
        self.sock.sendall(data + b"\r\n")
        return self._response(what or text.split(" ", 1)[0])

    def login(self, user, password):
        token = base64.b64encode(f"\0{user}\0{password}".encode()).decode()
        self.command(f'AUTHENTICATE "PLAIN" "{token}"', what="AUTHENTICATE")
        return self

    def putscript(self, name, script):
        self.command(
            f"PUTSCRIPT {_sieve_string(name)}", script.encode() if isinstance(script, str) else script, what="PUTSCRIPT"
        )

    def setactive(self, name):
        self.command(f"SETACTIVE {_sieve_string(name)}")

    def listscripts(self):
        """{name: active}"""
        out = {}
        for line in self.command("LISTSCRIPTS"):
            name, _, rest = line.decode().rpartition('"')
            out[name[1:].replace('\\"', '"').replace("\\\\", "\\")] = rest.strip().upper() == "ACTIVE"
        return out

    def getscript(self, name):
        return self.command(f"GETSCRIPT {_sieve_string(name)}")[0]

    def logout(self):
        try:
            self.command("LOGOUT")
        except (OSError, ManageSieveError):
            pass
        finally:
            self.file.close()
            self.sock.close()
