"""The fault matrix: borg-cyrus killed (SIGKILL, SIGTERM) at every step of
before/after, borg create failing or killed. After each fault: Cyrus runs and
accepts mail within the dead-man deadline, no filesystem is frozen, the next
backup succeeds and leaves no stale snapshot or mount, and a restore drill of
it loses no message.

Killing "exactly between two steps" uses BORG_CYRUS_FAULT (borg_cyrus/faults.py),
a fault-injection point, because it cannot be timed from outside; everything
else (freeze, snapshot, borg, borgmatic, Cyrus) is real. Set
BORG_CYRUS_WRITE_DOCS=1 to rewrite docs/reliability.md from the results."""

import os
import signal
import subprocess
import time

import pytest

from borg_cyrus import faults
from borg_cyrus.cyrus import imapview
from borg_cyrus.tools.demo import env_with_venv, msg, populate, restore_into_second_server
from support.common import BASE, ROOT
from support.fsimages import is_frozen
from support.helpers import borgmatic, borgmatic_config, init_repo, latest_archive
from support.setups import Setup

pytestmark = [
    pytest.mark.slow,
    pytest.mark.needs_root,
    pytest.mark.skipif(os.environ.get("VMH_GUEST") == "1", reason="host test"),
]

DEADLINE = 5
RESULTS = {}
CELLS = [(p, sig) for p in faults.POINTS for sig in ("SIGKILL", "SIGTERM")] + [
    ("borg create fails (repository locked)", ""),
    ("borgmatic killed during borg create", "SIGKILL"),
]


@pytest.fixture(scope="module")
def world():
    base = os.path.join(BASE, "faults")
    subprocess.run(["rm", "-rf", base])
    os.makedirs(base, 0o755)
    os.chmod(BASE, 0o755)
    s = Setup(base, "command-xfs")
    sb = s.sb.create()
    populate(sb)
    s.bc = s.config(snapshot={"deadline": DEADLINE})
    s.repo = os.path.join(base, "repo")
    s.cfg = borgmatic_config(base, s.repo, os.path.join(s.work, "patterns"))
    with open(s.cfg, "a") as f:
        f.write("lock_wait: 2\n")
    init_repo(s.cfg)
    yield s
    s.destroy()
    if os.environ.get("BORG_CYRUS_WRITE_DOCS") == "1" and RESULTS:
        write_doc()


def counts(sb):
    snap = imapview.snapshot(sb, ["alice", "bob", "dave"])
    return {(u, name): len(box.get("messages", {})) for u, v in snap.items() for name, box in v["mailboxes"].items()}


def recovered(s, sb):
    """Cyrus running and accepting mail, nothing frozen — within the deadline."""
    deadline = time.time() + DEADLINE + 3
    while time.time() < deadline:
        if sb.running() and not is_frozen(s.mnt, 0.3):
            try:
                sb.deliver("alice", msg("probe", f"probe {time.time()}"))
                return True
            except OSError:
                pass
        time.sleep(0.1)
    return False


@pytest.mark.parametrize("point,sig", CELLS, ids=[f"{p}-{s}".replace(" ", "_") for p, s in CELLS])
def test_fault(world, point, sig):
    s, sb = world, world.sb
    if not sb.running():
        sb.start()
    sb.deliver("bob", msg(f"before fault {point} {sig}", "x"))
    env = {"BORG_CYRUS_FAULT": f"{point}:{sig}"} if point in faults.POINTS else {}
    e = env_with_venv({"BORG_CYRUS_CONFIG": s.bc, **env})
    if point.startswith("borg create fails"):
        holder = subprocess.Popen(["borg", "with-lock", s.repo, "sleep", "30"], env=e)
        time.sleep(1.5)
        r = subprocess.run(["borgmatic", "-c", s.cfg, "create"], env=e, capture_output=True, text=True)
        holder.kill()
        holder.wait()
        assert r.returncode != 0
    elif point.startswith("borgmatic killed"):
        p = subprocess.Popen(
            ["borgmatic", "-c", s.cfg, "create"],
            env=e,
            start_new_session=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        # borg runs once the snapshot is mounted; kill the whole borgmatic session then
        deadline = time.time() + 60
        while (
            time.time() < deadline
            and subprocess.run(["pgrep", "-f", f"borg create.*{s.repo}"], capture_output=True).returncode
        ):
            time.sleep(0.02)
        os.killpg(p.pid, signal.SIGKILL)
        p.wait()
    else:
        r = subprocess.run(["borgmatic", "-c", s.cfg, "create"], env=e, capture_output=True, text=True)
        if point != "teardown":
            assert r.returncode != 0, f"the fault at {point} did not fire"

    ok_running = recovered(s, sb)
    # the next backup cleans up and succeeds
    live = counts(sb)
    r = borgmatic(s.cfg, "create", "--verbosity", "1", bc_config=s.bc, check=False)
    ok_next = r.returncode == 0
    left = s.leftovers()
    ok_state = not os.path.exists(os.path.join(s.work, "state.json"))
    # restore drill of that archive: count every mailbox's messages
    drill = os.path.join(s.base, "drill")
    subprocess.run(["rm", "-rf", drill])
    os.makedirs(drill, 0o755)
    b, _ = restore_into_second_server(env_with_venv(), s.cfg, latest_archive(s.repo), sb, drill, s.work)
    try:
        restored = counts(b)
    finally:
        b.destroy()
    lost = sum(
        max(0, n - restored.get(k, 0)) for k, n in live.items() if not k[1].endswith("Junk")
    )  # Junk's messages are excluded on purpose
    clean = ok_running and ok_next and not left and ok_state
    RESULTS[(point, sig)] = f"{'clean' if clean else 'NOT CLEAN'}, {lost} lost"
    assert ok_running, "Cyrus not running/writable or a filesystem still frozen after the deadline"
    assert ok_next, r.stdout + r.stderr
    assert left == [], left
    assert ok_state
    assert lost == 0, (live, restored)


def write_doc():
    rows = []
    for point in list(faults.POINTS) + ["borg create fails (repository locked)", "borgmatic killed during borg create"]:
        cells = [RESULTS.get((point, sig), "") for sig in ("SIGKILL", "SIGTERM", "")]
        rows.append(f"| {point} | {cells[0] or '—'} | {cells[1] or '—'} | {cells[2] or '—'} |")
    doc = os.path.join(ROOT, "docs", "reliability.md")
    with open(doc) as f:
        text = f.read()
    start, end = text.index("<!-- matrix -->"), text.index("<!-- /matrix -->")
    table = "<!-- matrix -->\n| fault | SIGKILL | SIGTERM | other |\n|---|---|---|---|\n" + "\n".join(rows) + "\n"
    with open(doc, "w") as f:
        f.write(text[:start] + table + text[end:])
