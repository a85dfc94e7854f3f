"""`restore messages --in-place` (real Cyrus, borg, borgmatic, IMAP): the
messages a user expunged come back into the folder itself (a non-ASCII
name) with new UIDs, the archived bytes, flags, keywords and INTERNALDATE;
-n changes nothing; a run killed between two APPENDs (SIGKILL at a fault
point: the moment cannot be hit from outside) is finished by running it
again, no message twice; messages with bare LFs, a NUL or a bare CR come back
once however often it runs; a non-admin login, missing settings and --into
together with --in-place are one line each and change nothing, and so is
an APPEND over quota; a shared
folder needs the admin's insert right; every other mailbox is untouched."""

import hashlib
import imaplib
import os
import socket

import pytest

from borg_cyrus.cyrus import storage
from borg_cyrus.cyrus.imapview import mutf7_encode, quote
from borg_cyrus.cyrus.layout import discover
from borg_cyrus.cyrus.sandbox import Sandbox
from borg_cyrus.tools.demo import populate
from support.common import cli, write_config
from support.helpers import snapshot
from support.restore_helpers import _boxes_by_name, backup, restore
from test_restore_messages import folder as folder_of

pytestmark = [pytest.mark.needs_root, pytest.mark.slow]

BOX = "INBOX/Entwürfe"


def msg(i):
    return (
        f"From: Dora <dora@example.org>\r\nSubject: Entwurf {i} =?utf-8?q?f=C3=BCr?= Bob\r\n"
        f"Message-ID: <d{i}@example.org>\r\n\r\nline {i}\r\n"
    ).encode()


def folder(conn, name):
    return folder_of(conn, mutf7_encode(name))


def expunge_all_but(sb, keep, box=BOX):
    a = sb.imap("alice")
    a.select(quote(box))
    typ, data = a.uid("SEARCH", "ALL")
    drop = [u for u in data[0].decode().split() if int(u) not in keep]
    a.uid("STORE", ",".join(drop), "+FLAGS", "(\\Deleted)")
    a.expunge()
    a.logout()


def others(sb):
    """Every mailbox's IMAP state except the folder restored into (and alice's quota)."""
    snap = snapshot(sb)
    snap["alice"] = {k: v for k, v in snap["alice"].items() if k != "mailboxes"} | {
        "mailboxes": {n: v for n, v in snap["alice"]["mailboxes"].items() if n != BOX}
    }
    snap["#quota"] = {k: v for k, v in snap["#quota"].items() if k != "user/alice"}
    return snap


def test_restore_in_place(base_dir):
    sb = Sandbox(os.path.join(base_dir, "cyrus")).create().start()
    try:
        populate(sb)
        a = sb.imap("alice")
        for i, flags in enumerate(["(\\Flagged $Work)", "(\\Seen \\Answered)", "($A \\Draft)", "()"]):
            typ, _ = a.append(quote(BOX), flags, imaplib.Time2Internaldate(1700000000 + 86400 * i), msg(i))
            assert typ == "OK"
        archived = folder(a, BOX)
        a.logout()
        t = sb.imap("bob")
        team = sorted((h, d) for h, _, d in folder(t, "shared/team").values())
        t.logout()
        pw = os.path.join(base_dir, "imap.pw")
        with open(os.open(pw, os.O_WRONLY | os.O_CREAT, 0o600), "w") as f:
            f.write("any password: the sandbox checks none\n")
        imap = {"host": "127.0.0.1", "port": sb.port, "admin": "cyrus", "password_file": pw}
        b = backup(sb, base_dir, imap=imap)
        keep = sorted(archived)[:1]
        expunge_all_but(sb, keep)  # the user deleted all but the first
        lost = {u: archived[u] for u in archived if u not in keep}
        before = others(sb)

        # -n: the login is checked and the folder found, nothing appended
        r = cli("-n", "restore", "messages", "user/alice/Entwürfe", "--expunged", "--in-place", "--borgmatic-config",
                b["bm"], config=b["bc"], check=0)  # fmt: skip
        assert f"{len(lost)} chosen" in r.stdout and f"would append {len(lost)} message(s)" in r.stdout, r.stdout
        al = sb.imap("alice")
        assert set(folder(al, BOX)) == set(keep)

        # back into the folder itself: new UIDs, as archived otherwise; a second run brings nothing twice
        restore(b, "messages", "user/alice/Entwürfe", "--expunged", "--in-place")
        got = folder(al, BOX)
        assert len(got) == len(archived), got
        back = {u: v for u, v in got.items() if u not in keep}
        assert min(back) > max(archived), back  # new UIDs
        assert sorted(back.values()) == sorted(lost.values()), (back, lost)  # bytes, flags, INTERNALDATE
        assert got[keep[0]] == archived[keep[0]]
        assert others(sb) == before
        r = restore(b, "messages", "user/alice/Entwürfe", "--expunged", "--in-place")
        assert "nothing to restore" in r.stdout and f"{len(archived)} already in the live folder" in r.stdout, r.stdout

        # killed between two APPENDs, then finished
        expunge_all_but(sb, keep)
        args = ["restore", "messages", "user/alice/Entwürfe", "--expunged", "--in-place", "--borgmatic-config", b["bm"]]
        r = cli(*args, config=b["bc"], extra_env={"BORG_CYRUS_FAULT": "restore-append:SIGKILL"})
        assert r.returncode == -9, (r.returncode, r.stderr)
        assert len(folder(al, BOX)) == len(keep) + 1
        r = restore(b, "messages", "user/alice/Entwürfe", "--expunged", "--in-place")
        assert f"{len(lost) - 1} chosen" in r.stdout and f"{len(keep) + 1} already in the live folder" in r.stdout, (
            r.stdout
        )
        got = folder(al, BOX)
        assert sorted(v for u, v in got.items() if u not in keep) == sorted(lost.values()), got
        al.logout()

        # bad input: one line, non-zero, nothing changed
        bob = dict(imap, admin="bob")  # not in admins: Cyrus refuses to let bob act as alice
        b_bob = dict(b, bc=write_config(os.path.join(base_dir, "bob.yaml"), _cfg(b["bc"], imap=bob)))
        expunge_all_but(sb, keep)
        state = snapshot(sb)
        r = restore(b_bob, "messages", "user/alice/Entwürfe", "--expunged", "--in-place", check=1)
        errors = [ln for ln in r.stderr.splitlines() if "error:" in ln]
        assert len(errors) == 1 and "bob cannot log in as alice" in errors[0], r.stderr
        b_none = dict(b, bc=write_config(os.path.join(base_dir, "none.yaml"), _cfg(b["bc"], imap=None)))
        r = restore(b_none, "messages", "user/alice/Entwürfe", "--in-place", check=2)
        assert "set imap.admin" in r.stderr, r.stderr
        r = restore(b, "messages", "user/alice/Entwürfe", "--in-place", "--into", "user/alice/X", check=2)
        assert "--in-place and --into" in r.stderr, r.stderr
        assert snapshot(sb) == state

        # over quota (the mail server's "disk full"): Cyrus refuses the APPEND; one line says how far it got
        adm = sb.imap("cyrus")
        typ, data = adm.getquota(quote("user/alice"))
        used = int(data[0].split(b"STORAGE ")[1].split()[0])
        assert adm.setquota(quote("user/alice"), f"(STORAGE {used})")[0] == "OK"
        r = restore(b, "messages", "user/alice/Entwürfe", "--expunged", "--in-place", check=1)
        errors = [ln for ln in r.stderr.splitlines() if "error:" in ln]
        assert len(errors) == 1 and "refused" in errors[0] and f"0 of {len(lost)} appended" in errors[0], r.stderr
        assert adm.setquota(quote("user/alice"), "(STORAGE 100000)")[0] == "OK"
        adm.logout()
        assert snapshot(sb) == state

        # a shared folder: as the admin itself, which needs the insert right
        t = sb.imap("bob")
        t.select(quote("shared/team"))
        t.uid("STORE", "1:*", "+FLAGS", "(\\Deleted)")
        t.expunge()
        t.logout()
        r = restore(b, "messages", "shared/team", "--expunged", "--in-place", check=1)
        assert "grant cyrus the l and i rights" in r.stderr or "no right to insert" in r.stderr, r.stderr
        adm = sb.imap("cyrus")
        assert adm.setacl(quote("shared/team"), "cyrus", "lrswit")[0] == "OK"
        adm.logout()
        r = restore(b, "messages", "shared/team", "--expunged", "--in-place")
        assert "appended" in r.stdout and "as cyrus" in r.stdout, r.stdout
        t = sb.imap("bob")
        assert sorted((h, d) for h, _, d in folder(t, "shared/team").values()) == team
        t.logout()
    finally:
        sb.stop()


def _cfg(path, **change):
    import yaml

    with open(path) as f:
        cfg = yaml.safe_load(f)
    for k, v in change.items():
        if v is None:
            cfg.pop(k, None)
        else:
            cfg[k] = v
    return cfg


# messages a real client can store: Cyrus takes a literal8 (RFC 3516 BINARY) byte for byte, bare LFs and
# NULs in the body too; LMTP and plain literals would refuse or rewrite them
ODD = {
    "lf": b"From: Dora <dora@example.org>\r\nSubject: bare LF\r\nMessage-ID: <lf@example.org>\r\n\r\nline one\nline two\n",
    "nul": b"From: Dora <dora@example.org>\r\nSubject: a NUL\r\nMessage-ID: <nul@example.org>\r\n\r\nbefore\0after\r\n",
    "cr": b"From: Dora <dora@example.org>\r\nSubject: bare CR\r\nMessage-ID: <cr@example.org>\r\n\r\nbare\rcr\r\n",
}
# message files placed in the spool and reconstructed, as a migration from another server leaves them: bare LFs
# in a header, which no APPEND takes (in place it comes back with CRLF there, the body as it was), and raw 8-bit
# header bytes, which Cyrus's APPEND stores as 'X' (munge8bit, on by default)
PLACED = {
    4: (b"From: Eve <eve@example.org>\nSubject: migrated\nMessage-ID: <mig@example.org>\n\nold\nmail\n",
        b"From: Eve <eve@example.org>\r\nSubject: migrated\r\nMessage-ID: <mig@example.org>\r\n\r\nold\nmail\n"),
    5: (b"From: Eve <eve@example.org>\r\nSubject: Gr\xc3\xbc\xc3\x9fe\r\nMessage-ID: <8b@example.org>\r\n\r\n\xc3\xbc\r\n",
        b"From: Eve <eve@example.org>\r\nSubject: GrXXXXe\r\nMessage-ID: <8b@example.org>\r\n\r\n\xc3\xbc\r\n"),
}  # fmt: skip


def client_append(sb, user, box, flags, when, data):
    """APPEND as a client that sends a literal8 (LITERAL+ too): one line, raw, on its own connection."""
    with socket.create_connection(("127.0.0.1", sb.port), timeout=60) as s:
        f = s.makefile("rwb")
        f.readline()
        f.write(b"a LOGIN " + user.encode() + b" x\r\n")
        f.flush()
        assert f.readline().startswith(b"a OK")
        date = imaplib.Time2Internaldate(when).encode()
        f.write(b" ".join([b"b APPEND", quote(box).encode(), flags.encode(), date, b"~{%d+}\r\n" % len(data)]))
        f.write(data + b"\r\n")
        f.flush()
        line = f.readline()
        while not line.startswith(b"b "):
            line = f.readline()
        assert line.startswith(b"b OK [APPENDUID"), line


def test_lf_nul_and_cr_messages_restored_twice(base_dir):
    """Bare LFs, a NUL and a bare CR in bodies (and migrated files with bare LFs or 8-bit bytes in a header):
    restored in place twice, each is there once, served as before (the migrated ones as an APPEND stores
    them); into a new folder, byte for byte; a rerun, in place or not, says they are back already, and a
    `restore mailbox --force` merge adds none of them again. (Before: the LF and CR ones came back again on every run, as imaplib's
    append made their line ends CRLF, a new GUID; the NUL one was refused on every run.)"""
    sb = Sandbox(os.path.join(base_dir, "cyrus")).create().start()
    try:
        adm = sb.imap("cyrus")
        assert adm.create("user/alice")[0] == "OK" and adm.create("user/alice/Odd")[0] == "OK"
        adm.logout()
        for i, (flags, data) in enumerate(zip(["(\\Seen $Odd)", "(\\Flagged)", "()"], ODD.values())):
            client_append(sb, "alice", "INBOX/Odd", flags, 1700000000 + 86400 * i, data)
        lay = storage.PathLayout.from_layout(discover(sb.imapd_conf))
        d = storage.data_dir(lay, _boxes_by_name(sb)["user.alice.Odd"])
        for uid, (data, _appended) in PLACED.items():
            with open(os.path.join(d, f"{uid}."), "wb") as f:
                f.write(data)
            os.chown(os.path.join(d, f"{uid}."), sb.uid, sb.gid)
        sb.tool("reconstruct", "user/alice/Odd")
        al = sb.imap("alice")
        archived = folder(al, "INBOX/Odd")
        sent = [hashlib.sha256(x).hexdigest() for x in [*ODD.values(), *(p for p, _a in PLACED.values())]]
        assert [archived[u][0] for u in sorted(archived)] == sent  # Cyrus serves them as they were sent
        pw = os.path.join(base_dir, "imap.pw")
        with open(os.open(pw, os.O_WRONLY | os.O_CREAT, 0o600), "w") as f:
            f.write("any password: the sandbox checks none\n")
        b = backup(sb, base_dir, imap={"host": "127.0.0.1", "port": sb.port, "admin": "cyrus", "password_file": pw})
        expunge_all_but(sb, set(), box="INBOX/Odd")

        # into a new folder: the files as archived, so byte for byte what Cyrus served
        restore(b, "messages", "user/alice/Odd", "--expunged", "--into", "user/alice/Copy")
        assert folder(al, "INBOX/Copy") == archived

        # in place, twice: once each, as Cyrus served them (the migrated ones as an APPEND stores them)
        want = sorted(v if u not in PLACED else (hashlib.sha256(PLACED[u][1]).hexdigest(), *v[1:])
                      for u, v in archived.items())  # fmt: skip
        r = restore(b, "messages", "user/alice/Odd", "--expunged", "--in-place")
        assert "5 chosen" in r.stdout and "appended 5 message(s)" in r.stdout, r.stdout
        got = folder(al, "INBOX/Odd")
        assert sorted(got.values()) == want, (got, want)
        r = restore(b, "messages", "user/alice/Odd", "--expunged", "--in-place")
        assert "nothing to restore" in r.stdout and "5 already in the live folder" in r.stdout, r.stdout
        assert folder(al, "INBOX/Odd") == got
        r = restore(b, "messages", "user/alice/Odd", "--into", "user/alice/Again")
        assert "nothing to restore" in r.stdout and "5 already in the live folder" in r.stdout, r.stdout
        assert al.select(quote("INBOX/Again"))[0] == "NO"
        r = restore(b, "mailbox", "user/alice/Odd", "--force")  # a merge adds what the folder lacks: nothing
        assert "added 0 archived message(s) to user/alice/Odd" in r.stdout, r.stdout
        assert folder(al, "INBOX/Odd") == got
        al.logout()
    finally:
        sb.stop()
