"""The mailbox list: parse `ctl_mboxlist -d`, name mailboxes, find their directories.

`ctl_mboxlist -d` prints one JSON object: a '{' line, one line per mailbox
(`"intname": {...},`) and a '}' line. It is parsed line by line, keeping only
what backup and restore need, so 100k mailboxes stay small in memory.
Internal names use '.' as separator and '^' for a dot inside a component;
virtual-domain names look like 'example.com!user.fred'.
"""

import json
import re
from dataclasses import dataclass, field

from borg_cyrus.errors import BorgCyrusError

# mbtype letters (Cyrus 3.x imap/mboxlist.c): an optional first letter names
# the type (none means email), the others are flags; sieve's 'f' is parsed
# as a flag and may stand anywhere.
MBTYPE_KINDS = {
    "e": "email",
    "n": "netnews",
    "s": "jmapsubmit",
    "p": "jmappushsub",
    "j": "jmapnotify",
    "f": "sieve",
    "b": "collection",
    "c": "calendar",
    "a": "addressbook",
}
_FLAGS = set("dfilmrz")
# flags that mean "no local spool directory": deleted (tombstone),
# intermediate, remote, reserved, moving (partition is host!partition).
_NO_SPOOL = set("dirzm")


class DumpError(BorgCyrusError):
    pass


@dataclass(slots=True)
class Mailbox:
    intname: str
    uniqueid: str
    partition: str
    mbtype: str = "e"
    acl: dict = field(default_factory=dict)
    uidvalidity: str = ""

    @property
    def legacy(self):
        return "l" in self.mbtype

    @property
    def has_spool(self):
        return not (_NO_SPOOL & set(self.mbtype)) and bool(self.partition)

    @property
    def kind(self):
        """'email', 'sieve', 'calendar', ... ('unknown' for a letter Cyrus 3.x does not write)."""
        if "f" in self.mbtype:
            return "sieve"
        first = self.mbtype[:1]
        if not first or first in _FLAGS:
            return "email"
        return MBTYPE_KINDS.get(first, "unknown")

    @property
    def imap_opens(self):
        """IMAP SELECT/EXAMINE opens only email mailboxes; the others answer
        "Invalid mailbox type" (index.c) and are checked on disk instead."""
        return self.kind == "email"

    @property
    def domain(self):
        return self.intname.split("!", 1)[0] if "!" in self.intname else None

    @property
    def localname(self):
        return self.intname.split("!", 1)[1] if "!" in self.intname else self.intname

    @property
    def parts(self):
        return [p.replace("^", ".") for p in self.localname.split(".")]

    @property
    def name(self):
        """External name with '/' as separator, '@domain' appended."""
        return external_name(self.intname)

    @property
    def userid(self):
        """Owner for user/... mailboxes (user@domain with virtual domains), else None."""
        p = self.parts
        if len(p) >= 2 and p[0] == "user":
            return p[1] + (f"@{self.domain}" if self.domain else "")
        return None

    @property
    def is_inbox(self):
        p = self.parts
        return len(p) == 2 and p[0] == "user"

    def to_json(self):
        return {"name": self.intname, "uniqueid": self.uniqueid, "partition": self.partition, "mbtype": self.mbtype}


def external_name(intname):
    domain = None
    local = intname
    if "!" in intname:
        domain, local = intname.split("!", 1)
    name = "/".join(p.replace("^", ".") for p in local.split("."))
    return f"{name}@{domain}" if domain else name


def admin_name(intname, unixhierarchysep=True, utf8=False):
    """Name as Cyrus's tools (mbpath, reconstruct) take it: admin namespace,
    '/' or '.' as separator like the server's unixhierarchysep. utf8: the
    parts decoded from modified UTF-7 (3.10's mbpath wants that; its
    reconstruct and quota, like every 3.6 tool, the UTF-7 form)."""
    from borg_cyrus.cyrus.imapview import mutf7_decode

    mb = Mailbox(intname, "", "")
    parts = [mutf7_decode(p) for p in mb.parts] if utf8 else mb.parts
    parts = parts if unixhierarchysep else [p.replace(".", "^") for p in parts]
    out = ("/" if unixhierarchysep else ".").join(parts)
    return f"{out}@{mb.domain}" if mb.domain else out


def internal_name(name):
    """Inverse of external_name."""
    domain = None
    if "@" in name:
        name, domain = name.rsplit("@", 1)
    local = ".".join(p.replace(".", "^") for p in name.split("/"))
    return f"{domain}!{local}" if domain else local


def parse_line(line, lineno=0):
    line = line.strip()
    if line.endswith(","):
        line = line[:-1]
    try:
        obj = json.loads("{" + line + "}")
    except ValueError as e:
        raise DumpError(f"mailbox list dump: line {lineno} is not valid JSON ({e.msg})") from None
    if len(obj) != 1:
        raise DumpError(f"mailbox list dump: line {lineno} holds {len(obj)} entries, expected 1")
    ((intname, entry),) = obj.items()
    if not isinstance(entry, dict):
        raise DumpError(f"mailbox list dump: line {lineno}: entry for {intname} is not an object")
    return Mailbox(
        intname=intname,
        uniqueid=str(entry.get("uniqueid") or ""),
        partition=str(entry.get("partition") or ""),
        mbtype=str(entry.get("mbtype") or "e"),
        acl=entry.get("acl") or {},
        uidvalidity=str(entry.get("uidvalidity") or ""),
    )


def iter_dump(lines):
    """Yield Mailbox objects from the lines of `ctl_mboxlist -d`.

    Raises DumpError when the dump is empty, truncated or malformed.
    """
    state = "start"
    lineno = 0
    for lineno, raw in enumerate(lines, 1):
        line = raw.strip() if isinstance(raw, str) else raw.decode("utf-8", "surrogateescape").strip()
        if not line:
            continue
        if state == "start":
            if line == "{}":
                state = "end"
                continue
            if line != "{":
                raise DumpError("mailbox list dump does not start with '{'; is this ctl_mboxlist -d output?")
            state = "body"
            continue
        if state == "end":
            raise DumpError(f"mailbox list dump: data after the closing '}}' at line {lineno}")
        if line == "}":
            state = "end"
            continue
        yield parse_line(line, lineno)
    if state != "end":
        raise DumpError(f"mailbox list dump is truncated (no closing '}}' after line {lineno})")


def load_dump(path):
    try:
        with open(path, encoding="utf-8", errors="surrogateescape") as f:
            return list(iter_dump(f))
    except FileNotFoundError:
        raise DumpError(f"mailbox list dump {path} is missing") from None


_GLOB_TOKEN = re.compile(r"\*\*|\*|\?|[^*?]+")


def glob_to_regex(pattern):
    """Mailbox-name glob: '*' within one level, '**' across levels, '?' one character."""
    out = []
    for tok in _GLOB_TOKEN.findall(pattern):
        if tok == "**":
            out.append(".*")
        elif tok == "*":
            out.append("[^/]*")
        elif tok == "?":
            out.append("[^/]")
        else:
            out.append(re.escape(tok))
    return re.compile("^" + "".join(out) + "$")


class NameMatcher:
    """Matches external mailbox names against admin-written globs.

    A glob without '@' matches the name in any domain.
    """

    def __init__(self, patterns):
        self.patterns = [(p, glob_to_regex(p), "@" in p) for p in patterns]

    def match(self, mailbox):
        full = mailbox.name
        bare = full.rsplit("@", 1)[0] if mailbox.domain else full
        for text, rx, with_domain in self.patterns:
            if rx.match(full if with_domain else bare):
                return text
        return None

    def __bool__(self):
        return bool(self.patterns)
