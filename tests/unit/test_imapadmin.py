"""restore messages --in-place, the pure parts: flags of an archived index
record (names from a forged cyrus.header never reach IMAP unless they are
atoms), the imap: settings (a password file readable by others, plaintext
to another host, missing settings: one line each), MAILBOXID lines."""

import os

import pytest

from borg_cyrus.cyrus import imapadmin
from borg_cyrus.cyrus.index import Record
from borg_cyrus.errors import ConfigError


class Cfg(dict):
    """A config as borg-cyrus loads it: the imap: schema's defaults filled in."""

    path = "/etc/borg-cyrus/config.yaml"

    def __init__(self, imap):
        import yaml

        from borg_cyrus import config

        with open(os.path.join(os.path.dirname(config.__file__), "schema.yaml")) as f:
            schema = yaml.safe_load(f)["properties"]["imap"]
        super().__init__(imap=config._fill_defaults(schema, dict(imap)))


def rec(sysf, user):
    return Record(7, 10, sysf, b"\0" * 20, 0, user)


def test_system_and_user_flags():
    names = ["$Work", "$A", "$B", "$C"]
    assert imapadmin.flags_of(rec(0x2, 0x1), names) == (["\\Flagged", "$Work"], [])
    assert imapadmin.flags_of(rec(0x11, 0), names) == (["\\Answered", "\\Seen"], [])
    assert imapadmin.flags_of(rec(0x8, 0xE), names) == (["\\Draft", "$A", "$B", "$C"], [])
    # the 100th flag lives in the fourth word
    many = [f"k{i}" for i in range(128)]
    assert imapadmin.flags_of(rec(0, 1 << 100), many) == (["k100"], [])


def test_deleted_dropped_for_expunged_ones_only():
    assert imapadmin.flags_of(rec(0x4 | 0x10, 0), [], drop_deleted=True) == (["\\Seen"], [])
    assert imapadmin.flags_of(rec(0x4, 0), []) == (["\\Deleted"], [])


@pytest.mark.parametrize(
    "name", ["a b", "x)\r\nA1 DELETE INBOX", "(", "\\Seen", "q\"uote", "pct%", "star*", "br]", "Ümlaut", "", "{5}"]
)
def test_forged_flag_names_never_sent(name):
    flags, bad = imapadmin.flags_of(rec(0, 0b11), ["$ok", name])
    assert flags == ["$ok"] and bad == [name]


def test_mailboxid_lines():
    m = imapadmin._STATUS.match(b'"INBOX/Project X" (MAILBOXID (abc123))')
    assert m.group("name") == b'"INBOX/Project X"' and m.group("id") == b"abc123"
    m = imapadmin._STATUS.match(b"INBOX (MESSAGES 3 MAILBOXID (r9y0))")
    assert m.group("name") == b"INBOX" and m.group("id") == b"r9y0"
    assert imapadmin._STATUS.match(b'"a\\"b" (MAILBOXID (z))').group("name") == b'"a\\"b"'


def write(tmp_path, text, mode):
    p = tmp_path / "pw"
    p.write_text(text)
    os.chmod(p, mode)
    return str(p)


def test_settings(tmp_path):
    pw = write(tmp_path, "s3cret\n", 0o600)
    got = imapadmin.settings(Cfg(imap={"admin": "cyrus", "password_file": pw, "host": "127.0.0.1", "tls": "none"}))
    assert got["password"] == "s3cret"


@pytest.mark.parametrize(
    "imap, mode, text, words",
    [
        ({}, 0o600, "x", "set imap.admin"),
        ({"admin": "cyrus", "password_file": None}, 0o600, "x", "imap.password_file"),
        ({"admin": "cyrus", "host": "mail.example.org", "tls": "none"}, 0o600, "x", "in clear to mail.example.org"),
        ({"admin": "cyrus"}, 0o644, "x", "chmod 600"),
        ({"admin": "cyrus"}, 0o600, "", "is empty"),
    ],
)
def test_bad_settings_one_line(tmp_path, imap, mode, text, words):
    pw = write(tmp_path, text, mode)
    imap = {"password_file": pw, **imap} if "admin" in imap else imap
    with pytest.raises(ConfigError) as e:
        imapadmin.settings(Cfg(imap=imap))
    assert words in str(e.value) and "\n" not in str(e.value), e.value


def test_password_file_symlink_refused(tmp_path):
    pw = write(tmp_path, "x", 0o600)
    link = tmp_path / "link"
    link.symlink_to(pw)
    with pytest.raises(ConfigError, match="password_file"):
        imapadmin.settings(Cfg(imap={"admin": "cyrus", "password_file": str(link)}))


@pytest.mark.parametrize("argv, dry", [
    (["restore", "messages", "user/a/Sent", "-n"], True),  # the README's runbook types it last
    (["-n", "restore", "messages", "user/a/Sent"], True),
    (["restore", "messages", "user/a/Sent", "--in-place"], False),
])  # fmt: skip
def test_dry_run_before_or_after_the_command(argv, dry):
    from borg_cyrus.cli import build_parser

    assert build_parser().parse_args(argv).dry_run is dry


def test_password_file_fifo_refused_without_hanging(tmp_path):
    fifo = tmp_path / "pw"
    os.mkfifo(fifo, 0o600)
    with pytest.raises(ConfigError, match="not a regular file"):
        imapadmin.settings(Cfg(imap={"admin": "cyrus", "password_file": str(fifo)}))
