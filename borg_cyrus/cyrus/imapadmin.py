"""The running server through IMAP, logged in as a Cyrus admin (imapd.conf
`admins:`): how `restore messages --in-place` puts archived messages back
into the folder they came from, with new UIDs and their flags and
INTERNALDATE, while Cyrus runs (APPEND is the one way to add a message with
its flags that Cyrus keeps consistent with its indexes, quota, conversations
and replication; no Cyrus tool does it).

The admin's credentials come from borg-cyrus's `imap:` settings (a password
file, mode 0600). The admin authenticates with SASL PLAIN and authorizes as
the folder's owner (Cyrus lets admins act as any user), so the message is the
owner's APPEND: the owner's \\Seen, the owner's quota. A shared folder is
appended to as the admin itself, which needs the `i` right there. The folder
is found by its MAILBOXID (RFC 8474, Cyrus 3.1+), never by a name built here,
so namespace settings (altnamespace, unixhierarchysep) do not matter.
Flag names come from the archive's cyrus.header: only valid IMAP atoms are
sent.

What Cyrus stores of an APPEND (imap/message.c message_copy_strict; seen on
3.6.1): a plain literal with a NUL or a bare LF anywhere is refused ("Message
contains NUL characters" / "bare newlines"); a literal8 (RFC 3516 BINARY,
which Cyrus offers) is stored byte for byte, NULs and bare LFs in the body
too, but a bare LF or a NUL in the header is still refused; 8-bit header
bytes become 'X' (munge8bit, on by default); a bare CR is kept. So the
message is sent as a literal8 with only its header's bare LFs made CRLF
(`append_form`), never through imaplib's append, which makes every bare CR
and LF a CRLF. The GUID Cyrus gives it is then the SHA-1 of that form (or of
its munged header): `content_keys` names every form an archived message can
have on the live server, so a rerun finds the ones already back.
"""

import hashlib
import imaplib
import ipaddress
import os
import re
import ssl

from borg_cyrus.cyrus import index
from borg_cyrus.cyrus.imapview import quote
from borg_cyrus.errors import BorgCyrusError, ConfigError
from borg_cyrus.safety import safeio

# an IMAP atom (RFC 3501 flag-keyword): no specials, no controls, no 8-bit, no leading backslash
_ATOM = re.compile(r"^[!#$&'+,\-./0-9:;<=>?@A-Z\[^_`a-z|}~]+$")
_STATUS = re.compile(rb'^(?P<name>"(?:[^"\\]|\\.)*"|[^ "(){]+) \(.*?MAILBOXID \((?P<id>[^)]*)\).*\)$')


def flags_of(record, user_flag_names, drop_deleted=False):
    """(IMAP flags of an archived index record, names skipped as not atoms)."""
    sysf = record.system_flags or 0
    flags = [n for bit, n in index.SYSTEM_FLAGS if sysf & bit and not (drop_deleted and bit == index.FLAG_DELETED)]
    bad = []
    for i, name in enumerate(user_flag_names):
        if (record.user_flags >> i) & 1:
            (flags if _ATOM.match(name) else bad).append(name)
    return flags, bad


def header_end(data):
    """Where the header of a message ends, as Cyrus reads it: after the first line holding nothing but
    CRs (len(data) if none)."""
    i = 0
    while True:
        j = data.find(b"\n", i)
        if j < 0:
            return len(data)
        if not data[i:j].strip(b"\r"):
            return j + 1
        i = j + 1


_BARE_LF = re.compile(rb"(?<!\r)\n")
_ANY_EOL = re.compile(rb"\r\n|\r(?!\n)|\n")  # imaplib's MapCRLF
_8BIT = bytes.maketrans(bytes(range(128, 256)), b"X" * 128)


def append_form(data, binary=True):
    """The bytes to APPEND so that Cyrus takes the message and stores what is sent: the header's bare
    LFs made CRLF; without a literal8 (binary=False) the body's too."""
    if not binary:
        return _BARE_LF.sub(b"\r\n", data)
    end = header_end(data)
    return _BARE_LF.sub(b"\r\n", data[:end]) + data[end:]


def munge8(data):
    """What munge8bit does to a message: 8-bit bytes of its header become 'X'."""
    end = header_end(data)
    return data[:end].translate(_8BIT) + data[end:]


def content_keys(data):
    """SHA-1 digests (GUIDs) the message data can have on the server: as it is, as appended here
    (with and without a literal8), as imaplib's append sent it (every line end CRLF), each with its
    header's 8-bit bytes munged or not."""
    forms = {data, append_form(data), append_form(data, binary=False), _ANY_EOL.sub(b"\r\n", data)}
    return {hashlib.sha1(x).digest() for f in forms for x in (f, munge8(f))}


def is_loopback(host):
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def settings(cfg):
    """The `imap:` settings, checked (one line on what is wrong and how to fix it)."""
    imap = dict(cfg.get("imap") or {})
    where = f"{cfg.path}: imap"
    if not imap.get("admin") or not imap.get("password_file"):
        raise ConfigError(
            f"{where}: restore messages --in-place logs in to IMAP as a Cyrus admin; set imap.admin (a user in "
            "imapd.conf admins:) and imap.password_file (mode 0600)"
        )
    if imap["tls"] == "none" and not is_loopback(imap["host"]):
        raise ConfigError(
            f"{where}.tls: none would send the admin's password in clear to {imap['host']}; use starttls or imaps"
        )
    path = imap["password_file"]
    try:
        fd = safeio.open_regular(path)  # no symlink, FIFO or device
    except OSError as e:
        raise ConfigError(f"{where}.password_file: {path}: {e.strerror}") from None
    except safeio.NotRegularFile as e:
        raise ConfigError(f"{where}.password_file: {e}") from None
    try:
        st = os.fstat(fd)
        if st.st_uid != os.geteuid() or st.st_mode & 0o077:
            raise ConfigError(
                f"{where}.password_file: {path} must be a file of {'root' if os.geteuid() == 0 else 'this user'} "
                "readable by nobody else: chown root: it; chmod 600 it"
            )
        password = os.read(fd, 4096).decode("utf-8", "strict").rstrip("\r\n")
    except UnicodeDecodeError:
        raise ConfigError(f"{where}.password_file: {path} is not UTF-8 text") from None
    finally:
        os.close(fd)
    if not password:
        raise ConfigError(f"{where}.password_file: {path} is empty")
    imap["password"] = password
    return imap


class Admin:
    """One IMAP connection: the admin, authorized as `authz` (an owner) or as itself."""

    def __init__(self, imap, authz=None, timeout=120):
        host, port, tls = imap["host"], imap["port"], imap["tls"]
        self.where = f"IMAP at {host}:{port}"
        context = ssl.create_default_context(cafile=imap["ca_file"]) if tls != "none" else None
        try:
            if tls == "imaps":
                self.conn = imaplib.IMAP4_SSL(host, port, ssl_context=context, timeout=timeout)
            else:
                self.conn = imaplib.IMAP4(host, port, timeout=timeout)
                if tls == "starttls":
                    self.conn.starttls(ssl_context=context)
        except (OSError, imaplib.IMAP4.error, ssl.SSLError) as e:
            raise BorgCyrusError(
                f"{self.where}: cannot connect ({e}); check imap.host, imap.port and imap.tls"
            ) from None
        who = authz or imap["admin"]
        blob = f"{authz or ''}\0{imap['admin']}\0{imap['password']}".encode()
        try:
            self.conn.authenticate("PLAIN", lambda _: blob)
        except (imaplib.IMAP4.error, OSError) as e:
            self.close()
            raise BorgCyrusError(
                f"{self.where}: {imap['admin']} cannot log in as {who} ({_text(e)}); imap.admin must be in imapd.conf "
                "admins: and imap.password_file hold its password"
            ) from None

    def find(self, mailboxid, top=None):
        """The folder's name as this session writes it, by MAILBOXID (None if absent).
        top: the folder's first name component, to LIST less than everything first."""
        found = None
        for pattern in ([quote(top + "*")] if top else []) + ['"*"']:
            self._do("LIST", '""', pattern, "RETURN", "(STATUS (MAILBOXID))")
            for item in self.conn.untagged_responses.pop("STATUS", []):
                m = _STATUS.match(item) if isinstance(item, bytes) else None
                if m and m.group("id").decode("ascii", "replace") == mailboxid:
                    found = m.group("name").decode("ascii")
            if found is not None:
                break
        if found is None and b"OBJECTID" not in " ".join(self.conn.capabilities).encode():
            raise BorgCyrusError(f"{self.where}: the server does not report MAILBOXID (Cyrus 3.2 or newer is needed)")
        return found

    def rights(self, name):
        self._do("MYRIGHTS", name)
        for item in self.conn.untagged_responses.pop("MYRIGHTS", []):
            if isinstance(item, bytes) and b" " in item:
                return item.rsplit(b" ", 1)[1].decode("ascii", "replace")
        return ""

    @property
    def binary(self):
        """The server takes literal8 (RFC 3516)."""
        return "BINARY" in self.conn.capabilities

    def append(self, name, flags, internaldate, data):
        """APPEND data as it is (see append_form), a literal8 where the server offers BINARY; the new UID
        (UIDPLUS) or None."""
        if not self.binary and b"\0" in data:
            raise BorgCyrusError(f"{self.where}: the message holds NUL bytes and the server offers no BINARY")
        date = imaplib.Time2Internaldate(internaldate) if internaldate else None
        marker = ("~" if self.binary else "") + f"{{{len(data)}}}"
        self.conn.literal = _Literal(data).send  # a method: imaplib sends it as is, on the continuation
        try:
            typ, resp = self.conn._simple_command("APPEND", name, "(" + " ".join(flags) + ")", date, marker)
        except (imaplib.IMAP4.error, OSError) as e:
            raise BorgCyrusError(f"{self.where}: APPEND to {name} failed: {_text(e)}") from None
        if typ != "OK":
            raise BorgCyrusError(f"{self.where}: APPEND to {name} refused: {_text(resp)}")
        m = re.search(rb"\[APPENDUID \d+ (\d+)\]", resp[0] or b"")
        return int(m.group(1)) if m else None

    def _do(self, *args):
        try:
            typ, data = self.conn._simple_command(*args)
        except (imaplib.IMAP4.error, OSError) as e:
            raise BorgCyrusError(f"{self.where}: {args[0]} failed: {_text(e)}") from None
        if typ != "OK":
            raise BorgCyrusError(f"{self.where}: {args[0]} refused: {_text(data)}")
        return typ, data

    def close(self):
        try:
            self.conn.logout()
        except (imaplib.IMAP4.error, OSError):
            pass


class _Literal:
    def __init__(self, data):
        self.data = data

    def send(self, _continuation):
        data, self.data = self.data, None  # once: a second continuation gets nothing more
        return data if data is not None else b""


def _text(v):
    if isinstance(v, list):
        v = b" ".join(x if isinstance(x, bytes) else str(x).encode() for x in v)
    if isinstance(v, bytes):
        v = v.decode("utf-8", "replace")
    return "".join(c if c.isprintable() else "?" for c in str(v))[:200]
