"""Mailbox types IMAP cannot open (Cyrus 3.6 keeps ManageSieve uploads in
`user/NAME/#sieve`, mbtype 'f'): the drill checks them on disk."""

import json
import os
import shutil

import pytest

from borg_cyrus.cyrus import storage
from borg_cyrus.cyrus.layout import discover
from support.restore_helpers import _boxes_by_name, backup
from test_verify import _verify

ALICE_VACATION = (
    'require ["vacation", "fileinto"];\n'
    '# Urlaub: Grüße aus Köln — 休暇\n'
    'if header :contains "subject" "Rechnung für" { fileinto "INBOX.Entwürfe"; }\n'
    'vacation :days 3 :subject "Abwesend — zurück am Montag" "Bin im Urlaub. Grüße, Alice";\n'
)
ALICE_SPARE = 'keep;\n'
BOB_FILTER = (
    'require "fileinto";\nif header :contains "from" "chef@example.org" { fileinto "INBOX.Archive 2019"; }  # Ärger\n'
)


def _upload_scripts(sb):
    sb.put_sieve("alice", "vacation", ALICE_VACATION, active=True)
    sb.put_sieve("alice", "spare", ALICE_SPARE)
    sb.put_sieve("bob", "filter", BOB_FILTER, active=True)
    ms = sb.managesieve("alice")
    try:
        assert ms.listscripts() == {"vacation": True, "spare": False}
        assert ms.getscript("vacation").decode() == ALICE_VACATION
    finally:
        ms.logout()


@pytest.mark.slow
@pytest.mark.needs_root
def test_verify_checks_sieve_mailboxes_on_disk(populated, base_dir):
    sb = populated
    _upload_scripts(sb)
    boxes = _boxes_by_name(sb)
    sieve = {n: boxes[n] for n in ("user.alice.#sieve", "user.bob.#sieve")}
    assert {mb.mbtype for mb in sieve.values()} == {"f"}
    assert not any(mb.imap_opens for mb in sieve.values())
    admin = sb.imap("cyrus")
    typ, data = admin.select('"user/alice/#sieve"', readonly=True)
    admin.logout()
    assert (typ, data) == ("NO", [b"Invalid mailbox type"])

    b = backup(sb, base_dir, mode="stop-master", exclude={"mailboxes": ["user/*/Junk"]})
    assert {n: b["manifest"]["mailboxes"][n]["messages"] for n in sieve} == {
        "user.alice.#sieve": 2,
        "user.bob.#sieve": 1,
    }
    r = _verify(b, base_dir)
    print("\n" + r.stdout)
    assert "RESULT: OK" in r.stdout, r.stdout
    assert (
        "checked 16 mailboxes, 25 message files" in r.stdout
        and "22 messages served over IMAP; 2 mailbox(es) IMAP cannot open checked on disk (sieve: 2)" in r.stdout
    ), r.stdout
    rep = json.loads(_verify(b, base_dir, "--deep", "--json").stdout)
    assert rep["ok"], rep["failures"]
    assert rep["on_disk"] == {"user/alice/#sieve": "sieve", "user/bob/#sieve": "sieve"}
    assert rep["stats"]["on_disk"] == 2 and rep["stats"]["hashed"] == 25

    # an archive without one of bob's script files fails, naming his #sieve mailbox
    lay = storage.PathLayout.from_layout(discover(sb.imapd_conf))
    victim = os.path.join(storage.data_dir(lay, sieve["user.bob.#sieve"]), "1.")
    assert os.path.exists(victim)
    shutil.rmtree(b["repo"])
    b = backup(sb, base_dir, mode="stop-master", exclude={"paths": [victim]})
    r = _verify(b, base_dir, check=1)
    print("\n" + r.stdout)
    assert "FAIL user/bob/#sieve: 1 message file(s) missing from the archive (UID 1)" in r.stdout
    assert "FAIL user/bob/#sieve: 1 message file(s) missing on the restored server (UID 1)" in r.stdout
    assert "RESULT: FAILED — 1 mailbox(es) differ: user/bob/#sieve" in r.stdout
