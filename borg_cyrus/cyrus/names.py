"""Mailbox names as admins type them, as Cyrus stores them, as people read them;
new uniqueids."""

import secrets

from borg_cyrus.cyrus import imapview, mboxlist
from borg_cyrus.errors import ConfigError

UNIQUEID_CHARS = "abcdefghijklmnopqrstuvwxyz0123456789"


def to_intname(name):
    """Internal name of an admin-namespace name ('/' separator, Unicode or
    modified UTF-7, '@domain' allowed)."""
    name = name.strip().strip("/")
    if not name:
        raise ConfigError("empty mailbox name")
    decoded = imapview.mutf7_decode(name) if "&" in name else name
    try:
        already = decoded != name and imapview.mutf7_encode(decoded) == name
    except Exception:
        already = False
    return mboxlist.internal_name(name if already else imapview.mutf7_encode(name))


def display(intname):
    """Human-readable external name (Unicode, '/' separator)."""
    return imapview.mutf7_decode(mboxlist.external_name(intname))


def parent_name(intname):
    dom, local = intname.split("!", 1) if "!" in intname else (None, intname)
    if "." not in local:
        return None
    p = local.rsplit(".", 1)[0]
    return f"{dom}!{p}" if dom else p


def new_uniqueid(taken=()):
    while True:
        u = "".join(secrets.choice(UNIQUEID_CHARS) for _ in range(24))
        if u not in taken:
            return u
