"""The README's "Install on a Cyrus server" block, verbatim, on a clean Debian 12.

Needs the Debian mirror and PyPI. Measured on the 2-core dev VM: cold 3 min
36 s (debootstrap of the cached root, ~50 s, once per machine, then the warm
run), warm 2 min 20-40 s (unpack ~5 s, apt-get install of cyrus-imapd and of
borg's build packages, borgbackup built from source by pip). The root is
cached in /var/cache/borg-cyrus-tests (tests/support/cleanroom.py).
"""

import json
import os
import re
import time

import pytest

from support.cleanroom import PROJECT, CleanRoot

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
REPO = "/var/backups/borg/cyrus"
PASS_ENV = {"BORG_PASSCOMMAND": "cat /etc/borgmatic/passphrase"}


def install_block(readme):
    """The shell code between the install-block markers, exactly as shown."""
    m = re.search(
        r"<!-- install-block:start -->\n```sh\n(.*?)```\n<!-- install-block:end -->", open(readme).read(), re.S
    )
    assert m, f"no install block in {readme}"
    return m.group(1)


def test_install_block_parses():
    block = install_block(os.path.join(ROOT, "README.md"))
    assert "borgmatic repo-create" in block and "borg-cyrus doctor" in block


def install_cyrus(root):
    """Debian's cyrus-imapd as an admin has it, running, with one user holding mail.

    - Services are not started while apt installs (policy-rc.d), as in any
      chroot: the root shares the host's network.
    - Debian's stock cyrus.conf enables pop3, nntp and http, whose binaries
      are in cyrus-pop3d/-nntpd/-caldav; without them the master exits 78.
      An admin running IMAP only comments those services out; so does this.
    - A server in use has mailboxes (borg-cyrus refuses an empty mailbox
      list): autocreate_post lets LMTP delivery create alice's INBOX (no IMAP
      admin or SASL set-up needed).
    - The master runs in its own network namespace (loopback only), so its
      ports (143, 4190, 2000) never collide with the host's.
    """
    policy = root.path("/usr/sbin/policy-rc.d")
    with open(policy, "w") as f:
        f.write("#!/bin/sh\nexit 101\n")
    os.chmod(policy, 0o755)
    apt_env = {"DEBIAN_FRONTEND": "noninteractive"}
    root.run(["apt-get", "update"], env=apt_env)
    root.run(["apt-get", "install", "-y", "cyrus-imapd"], env=apt_env, timeout=900)
    os.unlink(policy)
    root.run(["sed", "-i", "-E", r"s/^(\s*)(pop3|nntp|http)(\s)/\1#\2\3/", "/etc/cyrus.conf"])
    with open(root.path("/etc/imapd.conf"), "a") as f:
        f.write("autocreate_post: yes\n")
    root.run(["/etc/init.d/cyrus-imapd", "start"], prefix=["unshare", "--net"])
    msg = "From: bob@example.org\r\nTo: alice@example.org\r\nSubject: hello\r\n\r\nkept by borg\r\n"
    for _attempt in range(50):
        r = root.run(["/usr/lib/cyrus/bin/deliver", "alice"], input=msg, check=False)
        if r.returncode == 0:
            break
        time.sleep(0.2)
    assert r.returncode == 0, r.stdout
    pid = int(open(root.path("/run/cyrus-master.pid")).read())
    assert os.readlink(f"/proc/{pid}/root") == root.root


@pytest.mark.slow
@pytest.mark.needs_root
def test_readme_install_block_on_fresh_debian():
    with CleanRoot(ROOT) as root:
        install_cyrus(root)
        # the committed README (what was copied in); BORG_CYRUS_INSTALL_README=FILE tries an edit
        block = install_block(os.environ.get("BORG_CYRUS_INSTALL_README") or root.path(PROJECT + "/README.md"))
        with open(root.path("/root/install.sh"), "w") as f:
            f.write(block)
        # as pasted into a root shell, but stop at the first failing line
        r = root.run(["bash", "-e", "-x", "/root/install.sh"], cwd=PROJECT, timeout=1200)
        out = r.stdout
        print(out[-3000:])
        assert "no problems found" in out

        r = root.run(["borg-cyrus", "doctor"])
        assert "no problems found" in r.stdout

        r = root.run(["borgmatic", "list", "--json"])
        archives = json.loads(r.stdout)[0]["archives"]
        assert len(archives) == 1
        name = archives[0]["name"]
        r = root.run(["borg", "list", "--format", "{path}{NL}", f"{REPO}::{name}"], env=PASS_ENV)
        paths = set(r.stdout.splitlines())
        for p in (
            "var/lib/cyrus/mailboxes.db",
            "var/lib/borg-cyrus/dump/mailboxes.json",
            "var/lib/borg-cyrus/dump/manifest.json",
            "etc/imapd.conf",
            "etc/borgmatic/config.yaml",
        ):
            assert p in paths, p
        assert any(re.match(r"var/spool/cyrus/mail/uuid/.+/1\.$", p) for p in paths), "alice's message"
        # as the README says: neither is in the archive
        assert "etc/borgmatic/passphrase" not in paths and "etc/borg-cyrus.yaml" not in paths

        # the restore side reads the same borgmatic configuration
        r = root.run(["borg-cyrus", "restore", "list"])
        assert re.search(r"^alice\s+1\s+1\s", r.stdout, re.M), r.stdout

        # disaster-recovery step 2 as the runbook says: passphrase from the
        # environment, an existing --destination
        r = root.run(["borgmatic", "config", "bootstrap", "--repository", REPO], check=False)
        assert r.returncode != 0 and "passphrase" in r.stdout.lower(), r.stdout
        r = root.run(
            ["borgmatic", "config", "bootstrap", "--repository", REPO, "--destination", "/tmp/bootstrap"],
            env=PASS_ENV,
            check=False,
        )
        assert r.returncode != 0 and "No such file or directory" in r.stdout, r.stdout
        root.run(["mkdir", "/tmp/bootstrap"])
        root.run(
            ["borgmatic", "config", "bootstrap", "--repository", REPO, "--destination", "/tmp/bootstrap"], env=PASS_ENV
        )
        got = open(root.path("/tmp/bootstrap/etc/borgmatic/config.yaml")).read()
        assert got == open(root.path("/etc/borgmatic/config.yaml")).read()
