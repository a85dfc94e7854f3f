"""Cyrus 3.x mbtype letters: which mailboxes IMAP can open, which have a spool."""

import pytest

from borg_cyrus.cyrus.mboxlist import Mailbox


@pytest.mark.parametrize(
    "mbtype, kind, imap, spool",
    [
        ("e", "email", True, True),
        ("el", "email", True, True),
        ("", "email", True, True),
        ("f", "sieve", False, True),
        ("fl", "sieve", False, True),
        ("c", "calendar", False, True),
        ("a", "addressbook", False, True),
        ("b", "collection", False, True),
        ("s", "jmapsubmit", False, True),
        ("p", "jmappushsub", False, True),
        ("n", "netnews", False, True),
        ("x", "unknown", False, True),
        ("ed", "email", True, False),
        ("ei", "email", True, False),
        ("er", "email", True, False),
        ("ez", "email", True, False),
        ("em", "email", True, False),
        ("fd", "sieve", False, False),
        ("d", "email", True, False),
    ],
)
def test_mbtype_letters(mbtype, kind, imap, spool):
    mb = Mailbox("user.alice.#sieve", "u1", "default", mbtype=mbtype)
    assert (mb.kind, mb.imap_opens, mb.has_spool) == (kind, imap, spool)
