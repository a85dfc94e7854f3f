"""The shipped systemd units and timers (contrib/systemd) pass
`systemd-analyze verify`: in a scratch root holding this host's systemd
units, /bin/sh and the programs the units run at the paths README's install
block links them to, so a unit naming a missing program, a bad key or a bad
calendar fails the test."""

import glob
import os
import shutil
import subprocess

import pytest

from support.common import ROOT

UNITS = os.path.join(ROOT, "contrib", "systemd")
PROGRAMS = ["/usr/local/bin/borgmatic", "/usr/local/bin/borg-cyrus"]

pytestmark = pytest.mark.skipif(not shutil.which("systemd-analyze"), reason="systemd-analyze is not installed")


def _scratch_root(tmp_path):
    root = tmp_path / "root"
    for prog in PROGRAMS:
        path = root / prog.lstrip("/")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("#!/bin/sh\n")
        path.chmod(0o755)
    (root / "bin").mkdir()
    shutil.copy(os.path.realpath("/bin/sh"), root / "bin" / "sh")
    shutil.copytree("/usr/lib/systemd/system", root / "usr/lib/systemd/system", symlinks=True)
    dest = root / "etc/systemd/system"
    dest.mkdir(parents=True)
    return root, dest


def _verify(root, units):
    r = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", f"--root={root}", *map(str, units)],
        capture_output=True,
        text=True,
    )
    return r.returncode, (r.stdout + r.stderr).strip()


def test_every_shipped_unit_verifies(tmp_path):
    files = sorted(glob.glob(os.path.join(UNITS, "*.service")) + glob.glob(os.path.join(UNITS, "*.timer")))
    names = {os.path.basename(f) for f in files}
    assert {
        "borgmatic-cyrus.service",
        "borgmatic-cyrus.timer",
        "borgmatic-cyrus-hourly.service",
        "borgmatic-cyrus-hourly.timer",
        "borg-cyrus-verify.service",
        "borg-cyrus-verify.timer",
        "borg-cyrus-failure@.service",
    } <= names
    root, dest = _scratch_root(tmp_path)
    for f in files:
        shutil.copy(f, dest)
    rc, out = _verify(root, [dest / n for n in sorted(names)])
    assert rc == 0 and out == "", out
    # every timer starts its service, every service reports failures through the template
    for n in names:
        text = (dest / n).read_text()
        keys = {ln.split("=", 1)[0] for ln in text.splitlines() if "=" in ln and not ln.startswith("#")}
        if n.endswith(".timer"):
            assert (dest / n.replace(".timer", ".service")).exists()
        elif "@" not in n:
            assert "OnFailure=borg-cyrus-failure@%n.service" in text, n
            # the job stops and starts Cyrus and mounts snapshots for the host, and its
            # dead-man switch leaves the unit's control group: no mount namespace, no
            # read-only cgroupfs, the default KillMode
            assert not keys & {"KillMode", "ProtectSystem", "PrivateTmp", "ProtectControlGroups"}, n
            # a missing config fails the unit (OnFailure reports it), never a silent skip
            assert not [k for k in keys if k.startswith("Condition")], n
    # a stop of the backup must not wait for Cyrus's start (test_systemd_boot.py: the real thing)
    nightly = (dest / "borgmatic-cyrus.service").read_text()
    after = [w for ln in nightly.splitlines() if ln.startswith("After=") for w in ln[6:].split()]
    assert "cyrus-imapd.service" not in after and "multi-user.target" in after, after


@pytest.mark.parametrize(
    "change, expect",
    [
        (("Nice=10", "Nice=10\nNicee=3"), "Unknown key"),
        (("/usr/local/bin/borgmatic", "/usr/local/bin/borgmatik"), "not executable"),
    ],
)
def test_a_broken_unit_fails(tmp_path, change, expect):
    root, dest = _scratch_root(tmp_path)
    for f in glob.glob(os.path.join(UNITS, "*")):
        shutil.copy(f, dest)
    unit = dest / "borgmatic-cyrus.service"
    unit.write_text(unit.read_text().replace(*change))
    rc, out = _verify(root, [unit, dest / "borgmatic-cyrus.timer"])
    assert expect in out and (rc != 0 or out), out
