"""The shipped units under systemd as PID 1: Debian 12 and 13 roots booted by
systemd-nspawn (tests/support/nspawn.py) with Debian's cyrus-imapd as its own
unit, Debian's borgbackup 1.4 (Debian 12: bookworm-backports), the units
installed and `borg-cyrus init` run as the README says. One boot per Debian
release; only the poweroff case boots the same root again.

The quiesce window (stop-master: Cyrus stopped) is held open by a FIFO that
borg reads (read_special): the test holds its write end, so borg waits
inside `borg create` until the test lets go.

Cost on the 2-core dev VM, both releases: warm 1 min 50 s (two boots, 11
cases each); cold 4 min 30 s (each prepared root built and unpacked once per
machine, 1 to 1.5 min, on top of cleanroom's debootstrap bases, which the
other clean-root tests build too: about 2 min each when missing).
"""

import contextlib
import errno
import json
import os
import re
import shutil
import time

import pytest
import yaml

from support.common import ROOT

pytestmark = [pytest.mark.slow, pytest.mark.needs_root]

REPO = "/var/backups/borg/cyrus"
INIT_CONFIG = "/etc/borgmatic.d/cyrus.yaml"
MANUAL_CONFIG = "/etc/borgmatic/config.yaml"
HOURLY_CONFIG = "/etc/borg-cyrus/borgmatic-hourly.yaml"
NIGHTLY = "borgmatic-cyrus.service"
CYRUS = "cyrus-imapd.service"
HOLD = "/srv/hold"
PASS_ENV = {"BORG_PASSCOMMAND": "cat /etc/borgmatic/passphrase"}
IMAP_OK = r"""
import socket, sys
try:
    s = socket.create_connection(("127.0.0.1", 143), timeout=2)
    s.settimeout(5)
    sys.exit(0 if s.recv(100).startswith(b"* OK") else 1)
except OSError:
    sys.exit(1)
"""
MAIL = "From: bob@example.org\r\nTo: alice@example.org\r\nSubject: {subject}\r\n\r\nkept by borg\r\n"


def readme_block(heading):
    """The first sh block after a README heading, as shown."""
    text = open(os.path.join(ROOT, "README.md")).read()
    m = re.search(re.escape(heading) + r"\n.*?```sh\n(.*?)```", text, re.S)
    assert m, f"no sh block after {heading!r} in README.md"
    return m.group(1)


def _skip_reason():
    from support import nspawn

    return nspawn.available()


@pytest.fixture(scope="module", params=["bookworm", "trixie"], ids=["debian12", "debian13"])
def machine(request):
    from support.nspawn import Machine

    why = _skip_reason()
    if why:
        pytest.skip(why)
    t0 = time.monotonic()
    with Machine(ROOT, request.param) as m:
        m.setup = setup(m)
        print(f"systemd machine ready in {time.monotonic() - t0:.1f} s")
        yield m


def setup(m):
    """As an admin does: Cyrus up with mail, the README's unit lines, init, repo-create."""
    out = {}
    # README's install: the venv is there (tests/support/nspawn.py), its `ln` line links the
    # programs (borg only where the venv has one: this root has Debian's, /usr/bin/borg)
    block = readme_block("<!-- install-block:start -->")
    ln = next(line.split() for line in block.splitlines() if line.startswith("ln -sf "))
    m.run([a for a in ln if not a.startswith("/opt/") or os.path.exists(m.path(a))])
    assert wait(lambda: imap_ok(m), 60), "Debian's cyrus-imapd does not answer after boot"
    deliver(m, "first")
    # README: "systemd units and timers", run as shown
    r = m.run(["bash", "-e", "-x", "-c", readme_block("### systemd units and timers")])
    assert "borgmatic-cyrus.timer" in r.stdout and "borg-cyrus-verify.timer" in r.stdout, r.stdout
    # the tests start every run themselves: a timer due meanwhile (03:00, Sunday 04:00) must not
    m.run(["systemctl", "stop", "borgmatic-cyrus.timer", "borg-cyrus-verify.timer"])
    # README: "Set-up in four commands", 2 and 3 (4, a first `borgmatic create`, is the unit's job here)
    r = m.run(["borg-cyrus", "init", "--repository", REPO, "--encryption", "repokey-blake2"])
    out["init"] = r.stdout
    m.run(["borgmatic", "repo-create", "--encryption", "repokey-blake2", "--make-parent-dirs"])
    return out


@pytest.fixture
def box(machine):
    """The machine as every test finds it and leaves it: Cyrus running, no
    backup unit running or failed, init's config the only borgmatic one."""
    m = machine
    check_baseline(m)
    yield m
    m.run(["systemctl", "stop", NIGHTLY, "borgmatic-cyrus-hourly.service"], check=False)
    m.run(["systemctl", "reset-failed"], check=False)
    if not active(m, CYRUS):
        m.run(["systemctl", "start", CYRUS], check=False)
    assert wait(lambda: imap_ok(m), 30)
    check_baseline(m)


def check_baseline(m):
    assert os.path.exists(m.path(INIT_CONFIG)) and not os.path.exists(m.path(MANUAL_CONFIG))
    assert active(m, CYRUS), m.run(["systemctl", "status", CYRUS], check=False).stdout
    assert not active(m, NIGHTLY)


# -- helpers ------------------------------------------------------------------


def wait(cond, timeout, step=0.1):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(step)
    return False


def active(m, unit):
    return m.run(["systemctl", "is-active", "--quiet", unit], check=False).returncode == 0


def show(m, unit, prop):
    return m.run(["systemctl", "show", "-P", prop, unit]).stdout.strip()


def imap_ok(m):
    return m.python(IMAP_OK, check=False).returncode == 0


def deliver(m, subject, check=True):
    """LMTP delivery to alice (autocreate_post makes her INBOX): rc 0 = Cyrus took the mail."""
    r = None
    for _attempt in range(50):
        r = m.run(["/usr/lib/cyrus/bin/deliver", "alice"], input=MAIL.format(subject=subject), check=False)
        if r.returncode == 0 or not check:
            break
        time.sleep(0.2)
    if check:
        assert r.returncode == 0, r.stdout
    return r


def archives(m, config=None):
    argv = ["borgmatic", *(["-c", config] if config else []), "list", "--json"]
    return [a["name"] for a in json.loads(m.run(argv).stdout)[0]["archives"]]


def all_archives(m):
    r = m.run(["borg", "list", "--short", REPO], env=PASS_ENV)
    return r.stdout.split()


def master_in_unit(m):
    """Cyrus's master runs as cyrus-imapd.service's main process, in its control group, and no other master runs."""
    pid = int(show(m, CYRUS, "MainPID"))
    assert pid > 0
    comm = m.run(["cat", f"/proc/{pid}/comm"]).stdout.strip()
    cgroup = m.run(["cat", f"/proc/{pid}/cgroup"]).stdout.strip()
    assert comm == "cyrmaster" and cgroup.endswith(f"/system.slice/{CYRUS}"), (comm, cgroup)
    masters = m.run(["pgrep", "-x", "cyrmaster"], check=False).stdout.split()
    assert masters == [str(pid)], masters
    return pid


def cyrus_back_within(m, t0, limit):
    """Cyrus answers IMAP and takes mail; returns the seconds since t0."""
    assert wait(lambda: imap_ok(m), max(0.1, t0 + limit - time.monotonic()), step=0.05), (
        f"Cyrus does not answer IMAP {limit} s after the stop\n"
        + m.run(["journalctl", "-b", "--no-pager", "-n", "60"], check=False).stdout
    )
    while True:  # LMTP may answer a moment after IMAP
        r = deliver(m, "back", check=False)
        if r.returncode == 0 or time.monotonic() > t0 + limit:
            break
        time.sleep(0.05)
    took = time.monotonic() - t0
    assert r.returncode == 0, r.stdout
    assert took <= limit, f"Cyrus took mail only {took:.1f} s after the stop"
    return took


def no_watchdog_left(m):
    return wait(lambda: m.run(["pgrep", "-f", "borg_cyrus.providers.watchdog"], check=False).returncode != 0, 30)


def journal(m, unit, *args):
    r = m.run(["journalctl", "--no-pager", "-o", "json", "-u", unit, *args])
    return [json.loads(line) for line in r.stdout.splitlines() if line.strip()]


def of_invocation(entries, invocation):
    return [
        e for e in entries if invocation in (e.get("_SYSTEMD_INVOCATION_ID"), e.get("OBJECT_SYSTEMD_INVOCATION_ID"))
    ]


@contextlib.contextmanager
def moved(m, src, dest):
    os.rename(m.path(src), m.path(dest))
    try:
        yield
    finally:
        os.rename(m.path(dest), m.path(src))


@contextlib.contextmanager
def held_window(m, config=INIT_CONFIG):
    """borgmatic-cyrus.service started, borg held inside `borg create` on a
    FIFO (so Cyrus is stopped); yields the FIFO's write end."""
    path = m.path(config)
    original = open(path).read()
    cfg = yaml.safe_load(original)
    cfg["source_directories"] = [HOLD]
    cfg["read_special"] = True
    fifo = m.path(HOLD + "/fifo")
    os.makedirs(os.path.dirname(fifo), exist_ok=True)
    if not os.path.exists(fifo):
        os.mkfifo(fifo, 0o600)
    fd = None
    try:
        with open(path, "w") as f:
            yaml.safe_dump(cfg, f)
        m.run(["systemctl", "start", "--no-block", NIGHTLY])
        end = time.monotonic() + 120
        while fd is None:
            try:
                fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
            except OSError as e:
                if e.errno != errno.ENXIO:
                    raise
                state = show(m, NIGHTLY, "ActiveState")
                assert state in ("activating", "active") and time.monotonic() < end, (
                    f"{NIGHTLY} is {state}; borg never opened the FIFO\n"
                    + m.run(["journalctl", "-u", NIGHTLY, "--no-pager", "-n", "40"], check=False).stdout
                )
                time.sleep(0.05)
        assert not active(m, CYRUS), "stop-master: Cyrus must be stopped while borg runs"
        yield fd
    finally:
        if fd is not None:
            os.close(fd)
        with open(path, "w") as f:
            f.write(original)


# -- the nightly unit and init ---------------------------------------------------


def test_init_names_the_units(machine):
    out = machine.setup["init"]
    assert "stop-master" in out, out
    text = open(machine.path("/etc/borg-cyrus.yaml")).read()
    assert re.search(r"^\s*manager:\s*systemd\b", text, re.M), text
    steps = out.split("next:", 1)[1]
    assert "systemctl enable --now borgmatic-cyrus.timer" in steps, steps


def test_nightly_unit_runs_what_init_wrote(box):
    """`systemctl start` of the shipped nightly unit backs up with the config
    init wrote (/etc/borgmatic.d/cyrus.yaml), stopping Cyrus through its unit."""
    m = box
    before = archives(m)
    pid = master_in_unit(m)
    r = m.run(["systemctl", "start", NIGHTLY], check=False)
    assert r.returncode == 0, r.stdout
    assert show(m, NIGHTLY, "Result") == "success"
    new = [a for a in archives(m) if a not in before]
    assert len(new) == 1, (before, new, m.run(["journalctl", "-u", NIGHTLY, "--no-pager", "-n", "50"]).stdout)
    paths = m.run(["borg", "list", "--format", "{path}{NL}", f"{REPO}::{new[0]}"], env=PASS_ENV).stdout.split("\n")
    assert "etc/borgmatic.d/cyrus.yaml" in paths and "var/lib/cyrus/mailboxes.db" in paths
    assert any(re.match(r"var/spool/cyrus/mail/uuid/.+/1\.$", p) for p in paths), "alice's message"
    manifest = json.loads(
        m.run(
            ["borg", "extract", "--stdout", f"{REPO}::{new[0]}", "var/lib/borg-cyrus/dump/manifest.json"], env=PASS_ENV
        ).stdout
    )
    assert manifest["mode"] == "stop-master"
    # Cyrus was stopped and started again through its own unit
    assert master_in_unit(m) != pid


def test_nightly_unit_runs_the_manual_install_config(box):
    """README's manual install writes /etc/borgmatic/config.yaml: the same unit backs that up."""
    m = box
    before = all_archives(m)
    with moved(m, INIT_CONFIG, MANUAL_CONFIG):
        r = m.run(["systemctl", "start", NIGHTLY], check=False)
        assert r.returncode == 0, r.stdout
    assert len([a for a in all_archives(m) if a not in before]) == 1


def test_missing_config_fails_loudly(box):
    """No borgmatic config: `systemctl start` fails, the unit is failed, the
    journal says why and OnFailure= fires; never a silent skip."""
    m = box
    before = all_archives(m)
    with moved(m, INIT_CONFIG, "/root/cyrus.yaml.away"):
        r = m.run(["systemctl", "start", NIGHTLY], check=False)
        assert r.returncode != 0, r.stdout
        assert show(m, NIGHTLY, "ActiveState") == "failed"
        assert show(m, NIGHTLY, "Result") != "success"
        inv = show(m, NIGHTLY, "InvocationID")
        text = " ".join(e.get("MESSAGE", "") for e in of_invocation(journal(m, NIGHTLY), inv))
        assert "No valid configuration files found" in text, text
        failure = f"borg-cyrus-failure@{NIGHTLY}.service"
        assert wait(lambda: f"{NIGHTLY} failed" in m.run(["journalctl", "-u", failure, "--no-pager"]).stdout, 30)
    # the hourly unit without its config: failed too
    assert not os.path.exists(m.path(HOURLY_CONFIG))
    r = m.run(["systemctl", "start", "borgmatic-cyrus-hourly.service"], check=False)
    assert r.returncode != 0 and show(m, "borgmatic-cyrus-hourly.service", "ActiveState") == "failed", r.stdout
    assert all_archives(m) == before


def test_hourly_unit(box):
    """The hourly database-only unit, configured as README's "Hourly database
    backups" says: a dumps archive, Cyrus never stopped."""
    m = box
    before = all_archives(m)
    pid = master_in_unit(m)
    block = readme_block("### Hourly database backups").splitlines()
    # its lines but the `borgmatic create` (the unit's job here), from the checkout as shown
    lines = [ln for ln in block if ln.strip() and not ln.startswith("borgmatic ")]
    try:
        m.run(["bash", "-e", "-x", "-c", "cd /root/borg-cyrus\n" + "\n".join(lines)])
        path = m.path(HOURLY_CONFIG)
        text = open(path).read().replace("path: /var/backups/borg/cyrus", f"path: {REPO}")
        if "encryption_passcommand" not in text:  # the sample lacks it (issue 27, item 5)
            text += "encryption_passcommand: cat /etc/borgmatic/passphrase\n"
        with open(path, "w") as f:
            f.write(text)
        r = m.run(["systemctl", "start", "borgmatic-cyrus-hourly.service"], check=False)
        assert r.returncode == 0, r.stdout + m.run(["journalctl", "-u", "borgmatic-cyrus-hourly", "--no-pager"]).stdout
        new = [a for a in all_archives(m) if a not in before]
        assert len(new) == 1 and "-dumps-" in new[0], new
        assert master_in_unit(m) == pid, "the hourly run must not stop Cyrus"
    finally:
        shutil.rmtree(m.path("/etc/borg-cyrus"), ignore_errors=True)


# -- stop, kill, poweroff inside the window ------------------------------------


@pytest.mark.parametrize("ordering", ["shipped", "after-cyrus"])
def test_stop_inside_the_window(box, ordering):
    """`systemctl stop` while Cyrus is stopped for the backup: Cyrus is back
    and takes mail within 10 s, its master in cyrus-imapd.service's group.
    after-cyrus: with a drop-in ordering the unit After=cyrus-imapd.service
    (the units before this fix had it): the `after` hook must not wait for
    its own unit's stop."""
    m = box
    dropin = m.path(f"/etc/systemd/system/{NIGHTLY}.d/order.conf")
    if ordering == "after-cyrus":
        m.write(dropin[len(m.root) :], f"[Unit]\nAfter={CYRUS}\n")
        m.run(["systemctl", "daemon-reload"])
    try:
        with held_window(m):
            t0 = time.monotonic()
            r = m.run(["systemctl", "stop", NIGHTLY], check=False, timeout=120)
            stopped = time.monotonic() - t0
            took = cyrus_back_within(m, t0, 10)
        print(f"stop returned in {stopped:.1f} s, Cyrus back in {took:.1f} s")
        assert r.returncode == 0, r.stdout
        said = " ".join(
            e.get("MESSAGE", "") for e in of_invocation(journal(m, NIGHTLY), show(m, NIGHTLY, "InvocationID"))
        )
        # ordered: `after` queued the start and left it to the switch; else it saw Cyrus start
        assert ("Cyrus's start is queued" in said) == (ordering == "after-cyrus"), said
        assert stopped <= 10, f"systemctl stop took {stopped:.1f} s"
        master_in_unit(m)
        assert not active(m, NIGHTLY)
        assert no_watchdog_left(m)
    finally:
        if os.path.exists(dropin):
            os.unlink(dropin)
            m.run(["systemctl", "daemon-reload"])


def test_sigkill_inside_the_window(box):
    """`systemctl kill --signal=SIGKILL` of the whole unit in the window: the
    dead-man switch (outside the unit) starts Cyrus through its unit."""
    m = box
    with held_window(m):
        t0 = time.monotonic()
        m.run(["systemctl", "kill", "--signal=SIGKILL", NIGHTLY])
        took = cyrus_back_within(m, t0, 10)
    print(f"Cyrus back in {took:.1f} s")
    master_in_unit(m)
    assert wait(lambda: not active(m, NIGHTLY), 30)
    assert no_watchdog_left(m)


def test_warnings_and_errors_reach_the_journal_at_their_priority(box):
    """Under the nightly unit borgmatic runs the hooks and re-logs their output
    at one level; borg-cyrus's warnings and errors still reach the journal at
    their priorities, attributed to the unit, each once."""
    m = box
    # a warning: the next run cleans up after one killed inside the window
    with held_window(m):
        m.run(["systemctl", "kill", "--signal=SIGKILL", NIGHTLY])
        assert wait(lambda: imap_ok(m), 30)
    assert wait(lambda: not active(m, NIGHTLY), 30)
    m.run(["systemctl", "reset-failed", NIGHTLY])
    assert no_watchdog_left(m)
    r = m.run(["systemctl", "start", NIGHTLY], check=False)
    assert r.returncode == 0, r.stdout
    inv = show(m, NIGHTLY, "InvocationID")
    warned = of_invocation(journal(m, NIGHTLY, "-p", "warning"), inv)
    ours = [e for e in warned if "cleaning up after an earlier run that did not finish" in e.get("MESSAGE", "")]
    assert [e["PRIORITY"] for e in ours] == ["4"], [(e.get("PRIORITY"), e.get("MESSAGE")) for e in warned]
    everything = of_invocation(journal(m, NIGHTLY), inv)
    assert len([e for e in everything if "cleaning up after an earlier run" in e.get("MESSAGE", "")]) == 1
    info = [e for e in everything if "after: done" in e.get("MESSAGE", "")]
    assert [e["PRIORITY"] for e in info] == ["6"], info

    # an error: a bad borg-cyrus config fails `before`
    conf = m.path("/etc/borg-cyrus.yaml")
    original = open(conf).read()
    try:
        with open(conf, "a") as f:
            f.write("bogus_key: 1\n")
        r = m.run(["systemctl", "start", NIGHTLY], check=False)
        assert r.returncode != 0
        inv = show(m, NIGHTLY, "InvocationID")
        errors = of_invocation(journal(m, NIGHTLY, "-p", "err"), inv)
        ours = [e for e in errors if "bogus_key: unknown key" in e.get("MESSAGE", "")]
        assert ours and {e["PRIORITY"] for e in ours} == {"3"}, [(e.get("PRIORITY"), e.get("MESSAGE")) for e in errors]
    finally:
        with open(conf, "w") as f:
            f.write(original)
    assert active(m, CYRUS), "a `before` that fails on its config leaves Cyrus alone"


def test_verify_unit(box):
    """The shipped weekly drill, under its UMask=0077, on the latest archive."""
    m = box
    r = m.run(["systemctl", "start", NIGHTLY], check=False)
    assert r.returncode == 0, r.stdout
    r = m.run(["systemctl", "start", "borg-cyrus-verify.service"], check=False, timeout=900)
    log = m.run(["journalctl", "-u", "borg-cyrus-verify.service", "--no-pager", "-n", "40"], check=False).stdout
    assert r.returncode == 0, log
    assert show(m, "borg-cyrus-verify.service", "UMask") == "0077"


def test_poweroff_inside_the_window(box):
    """`systemctl poweroff` of the container while Cyrus is stopped for the
    backup: the shutdown does not hang, and the next boot starts Cyrus
    normally; the next backup cleans up and runs."""
    m = box
    with held_window(m):
        t0 = time.monotonic()
        m.run(["systemctl", "poweroff"], check=False, timeout=30)
        took = m.wait_down(t0, 60)
    print(f"poweroff took {took:.1f} s")
    assert took <= 30, f"the shutdown took {took:.1f} s"
    m.boot()
    # what `after` said while the system went down: one clear error line, at its priority
    errors = [e for e in journal(m, NIGHTLY, "-b", "-1", "-p", "err") if e.get("SYSLOG_IDENTIFIER") == "borg-cyrus"]
    assert any("the system is shutting down" in e["MESSAGE"] and e["PRIORITY"] == "3" for e in errors), errors
    assert wait(lambda: imap_ok(m), 30)
    master_in_unit(m)
    deliver(m, "after the reboot")
    mounts = m.run(["findmnt", "-rn", "-o", "TARGET"]).stdout.split()
    assert not [p for p in mounts if "borg-cyrus" in p], mounts
    before = all_archives(m)
    r = m.run(["systemctl", "start", NIGHTLY], check=False)
    assert r.returncode == 0, r.stdout
    assert len([a for a in all_archives(m) if a not in before]) == 1
    assert not os.path.exists(m.path("/var/lib/borg-cyrus/state.json"))
    master_in_unit(m)
