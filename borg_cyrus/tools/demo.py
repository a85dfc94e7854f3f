"""`borg-cyrus demo`: the whole product on throwaway servers.

A demo Cyrus with awkward sample mail is backed up by `borgmatic create`
(with the sample borgmatic config) into a local repository, the archive is
extracted and restored into a second throwaway Cyrus, and what IMAP clients
see on both is compared.
"""

import copy
import json
import os
import shutil
import types
import sys
import time

import yaml

from borg_cyrus.execute import Runner

from borg_cyrus.cyrus import imapview
from borg_cyrus.cyrus.imapview import quote
from borg_cyrus.cyrus.sandbox import Sandbox

USERS = ("alice", "bob", "dave")
QUOTA_ROOTS = ("user/alice", "user/bob")
EXCLUDE_MAILBOXES = ["user/*/Junk"]
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def msg(subject, body, sender="sender@example.org", to="rcpt@example.org", extra=""):
    return (
        f"From: {sender}\r\nTo: {to}\r\nSubject: {subject}\r\n"
        f"Date: Thu, 26 Nov 2026 10:00:00 +0000\r\nMessage-ID: <{abs(hash((subject, body)))}@demo>\r\n{extra}"
        f"\r\n{body}\r\n"
    ).encode()


def _ok(result, what):
    typ, data = result
    if typ != "OK":
        raise RuntimeError(f"{what}: {typ} {data}")
    return data


BOB_SIEVE = (
    'require ["fileinto", "vacation"];\n'
    'if header :contains "subject" "old" { fileinto "INBOX.Archive 2019"; }\n'
    'vacation :days 7 :subject "Abwesend" "Bin bis Montag weg. Grüße, Bob";\n'
)


def populate(sb, managesieve=False):
    """Awkward sample data: non-ASCII and spaced names, nesting, a second
    partition, a shared folder with per-user \\Seen, flags and keywords,
    subscriptions, METADATA, quota, expunged UIDs, and a legacy-layout user.
    managesieve: bob uploads an active Sieve script over ManageSieve (kept in
    user/bob/#sieve, which IMAP cannot open; bob's quota root holds no
    excluded folder, so his KiB usage must come back exactly)."""
    # dave's mailboxes are created by name (legacy layout), as on an upgraded server
    sb.restart_with_legacy_dirs(True)
    a = sb.imap("cyrus")
    for name in ("user/dave", "user/dave/Junk", "user/dave/Old Stuff"):
        _ok(a.create(quote(name)), f"create {name}")
    a.logout()
    sb.restart_with_legacy_dirs(False)

    a = sb.imap("cyrus")
    for name in (
        "user/alice",
        "user/alice/Sent",
        "user/alice/Entwürfe",
        "user/alice/Project X",
        "user/alice/Project X/2024",
        "user/alice/Junk",
        "user/alice/Trash",
        "user/bob",
        "shared",
        "shared/team",
    ):
        _ok(a.create(quote(name)), f"create {name}")
    second = "second" if "second" in sb.partitions else None
    if second:
        _ok(a._simple_command("CREATE", quote("user/bob/Archive 2019"), second), "create on second partition")
    else:
        _ok(a.create(quote("user/bob/Archive 2019")), "create")
    _ok(a.setacl(quote("shared/team"), "alice", "lrswipkxtecd"), "setacl")
    _ok(a.setacl(quote("shared/team"), "bob", "lrswipkxtecd"), "setacl")
    _ok(a.setacl(quote("user/alice/Project X"), "bob", "lrs"), "setacl")
    _ok(a.setquota(quote("user/alice"), "(STORAGE 100000)"), "setquota")
    _ok(a.setquota(quote("user/bob"), "(STORAGE 50000 MESSAGE 1000)"), "setquota")
    # (SETMETADATA on a non-user mailbox trips an assertion in Cyrus 3.6.1)
    _ok(
        a._simple_command(
            "SETMETADATA", quote("user/bob/Archive 2019"), '(/shared/comment "old mail: \\"do not delete\\"")'
        ),
        "setmetadata",
    )
    a.logout()
    bo = sb.imap("bob")
    for i in range(3):
        _ok(bo.append(quote("shared/team"), None, None, msg(f"team note {i}", f"shared message {i}")), "append")
    for i in range(4):
        _ok(
            bo.append(quote("INBOX/Archive 2019"), "(\\Seen)", None, msg(f"old {i}", "archived " * (50 * i + 1))),
            "append",
        )
    bo.logout()

    for i in range(5):
        sb.deliver("alice", msg(f"hello alice {i}", f"body {i}\r\nline two"))
    sb.deliver("bob", msg("hello bob", "Grüße"))
    sb.deliver("dave", msg("legacy", "dave's mail"))
    big = "x" * 76 + "\r\n"
    sb.deliver("alice", msg("attachment", big * 3000, extra="X-Big: yes\r\n"))

    al = sb.imap("alice")
    for name, n in (("Sent", 2), ("Entwürfe", 1), ("Project X/2024", 2), ("Junk", 3), ("Trash", 3)):
        for i in range(n):
            _ok(
                al.append(
                    quote(f"INBOX/{name}"),
                    "(\\Seen)" if name == "Sent" else None,
                    None,
                    msg(f"{name} {i}", f"{name} body {i}"),
                ),
                "append",
            )
    al.select("INBOX")
    _ok(al.store("1", "+FLAGS", "(\\Seen \\Answered)"), "store")
    _ok(al.store("2", "+FLAGS", "(\\Flagged $Important custom_kw)"), "store")
    _ok(al.store("3", "+FLAGS", "(\\Seen)"), "store")
    al.close()
    al.select(quote("INBOX/Trash"))
    _ok(al.store("2", "+FLAGS", "(\\Deleted)"), "store")
    al.expunge()
    al.close()
    al.select(quote("shared/team"))
    _ok(al.store("1", "+FLAGS", "(\\Seen)"), "store")
    al.close()
    for name in ("INBOX", "INBOX/Sent", "INBOX/Entwürfe", "shared/team"):
        _ok(al.subscribe(quote(name)), "subscribe")
    _ok(al._simple_command("SETMETADATA", quote("INBOX/Sent"), '(/private/comment "my sent mail")'), "metadata")
    _ok(al._simple_command("SETMETADATA", quote("INBOX/Sent"), "(/private/specialuse \"\\\\Sent\")"), "specialuse")
    al.logout()

    bo = sb.imap("bob")
    bo.select(quote("shared/team"))
    _ok(bo.store("2:3", "+FLAGS", "(\\Seen $Done)"), "store")
    bo.close()
    _ok(bo.subscribe(quote("shared/team")), "subscribe")
    _ok(bo.subscribe(quote("INBOX/Archive 2019")), "subscribe")
    bo.logout()
    # a sieve script stored for alice
    sieve = os.path.join(sb.sievedir, "alice-demo.script")
    with open(sieve, "w") as f:
        f.write('require "fileinto";\nif header :contains "subject" "spam" { fileinto "INBOX.Junk"; }\n')
    os.chown(sieve, sb.uid, sb.gid)
    if managesieve:
        sb.put_sieve("bob", "demo", BOB_SIEVE, active=True)


def expected_after_restore(snap, excluded):
    """What a restore must show: the same, with excluded mailboxes emptied."""
    out = copy.deepcopy(snap)
    for user, view in out.items():
        if user.startswith("#"):
            continue
        for name, box in view["mailboxes"].items():
            full = name if not name.startswith("INBOX") else f"user/{user}{name[5:]}"
            if any(imapview.mutf7_encode(full) == imapview.mutf7_encode(e) for e in excluded):
                box["messages"] = {}
    return out


def sample_path(name):
    """A shipped sample: in the checkout, else where pip put it (<prefix>/share/borg-cyrus)."""
    for d in (REPO_ROOT, os.path.join(sys.prefix, "share", "borg-cyrus")):
        if os.path.exists(os.path.join(d, name)):
            return os.path.join(d, name)
    raise FileNotFoundError(
        f"{name} is neither in {REPO_ROOT} nor in {sys.prefix}/share/borg-cyrus; reinstall borg-cyrus"
    )


def sample_borgmatic_config(repo, patterns_file):
    """The shipped sample with the repository (and, for the demo's own work
    directory, the patterns path) changed — nothing else."""
    with open(sample_path("sample-borgmatic.yaml")) as f:
        cfg = yaml.safe_load(f)
    cfg["repositories"] = [{"path": repo, "label": "demo"}]
    if patterns_file:
        cfg["patterns_from"] = [patterns_file]
    return cfg


def env_with_venv(extra=None):
    env = dict(os.environ)
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
    env.setdefault("BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK", "yes")
    env.setdefault("BORG_RELOCATED_REPO_ACCESS_IS_OK", "yes")
    env.update(extra or {})
    return env


def sh(argv, env=None, cwd=None, check=True):
    """Run a command of the demo (through the one Runner); stdout/stderr as text."""
    res = Runner().run(argv, env=env, cwd=cwd, check=False, timeout=0)
    r = types.SimpleNamespace(returncode=res.returncode, stdout=res.text, stderr=res.stderr.decode("utf-8", "replace"))
    if check and r.returncode:
        raise RuntimeError(f"{' '.join(argv)} failed ({r.returncode}):\n{r.stdout}\n{r.stderr}")
    return r


def write_yaml(path, data):
    with open(path, "w") as f:
        yaml.safe_dump(data, f, sort_keys=False, allow_unicode=True)
    os.chmod(path, 0o600)


def excluded_names(manifest):
    from borg_cyrus.cyrus.mboxlist import external_name

    return [external_name(n) for n in manifest.get("excluded_mailboxes", [])]


def run_demo(workdir, mode="stop-master", keep=False):
    t_all = time.monotonic()
    workdir = os.path.abspath(workdir)
    if os.path.exists(workdir):
        for sub in ("a", "b"):
            Sandbox(os.path.join(workdir, sub)).stop()
        shutil.rmtree(workdir)
    os.makedirs(workdir, 0o755)
    os.chmod(workdir, 0o755)
    timings = {}
    print(f"== borg-cyrus demo in {workdir}")

    a = Sandbox(os.path.join(workdir, "a"), partitions=("default", "second")).create()
    t = time.monotonic()
    populate(a, managesieve=True)
    timings["populate"] = time.monotonic() - t
    before = imapview.snapshot(a, USERS, QUOTA_ROOTS)
    boxes, msgs = imapview.count(before)
    print(f"demo Cyrus A: port {a.port}, {boxes} mailboxes, {msgs} messages as seen over IMAP by {', '.join(USERS)}")

    work = os.path.join(workdir, "work")
    bc_conf = os.path.join(workdir, "borg-cyrus.yaml")
    write_yaml(
        bc_conf,
        {
            "imapd_conf": a.imapd_conf,
            "cyrus_conf": a.cyrus_conf,
            "mode": mode,
            "work_directory": work,
            "service": a.borg_cyrus_service(),
            "exclude": {"mailboxes": EXCLUDE_MAILBOXES},
        },
    )
    repo = os.path.join(workdir, "repo")
    bm_conf = os.path.join(workdir, "borgmatic.yaml")
    write_yaml(bm_conf, sample_borgmatic_config(repo, os.path.join(work, "patterns")))
    env = env_with_venv({"BORG_CYRUS_CONFIG": bc_conf, "BORG_PASSPHRASE": ""})

    sh(["borgmatic", "-c", bm_conf, "repo-create", "--encryption", "none"], env=env)
    t = time.monotonic()
    r = sh(["borgmatic", "-c", bm_conf, "create", "--verbosity", "1", "--stats"], env=env)
    timings["borgmatic create"] = time.monotonic() - t
    hook_lines = [
        ln for ln in (r.stdout + r.stderr).splitlines() if "borg-cyrus" in ln and ("ready" in ln or "done" in ln)
    ]
    for ln in hook_lines:
        print("  " + ln.strip())
    if not a.running():
        raise RuntimeError("Cyrus A is not running after the backup")
    with open(os.path.join(work, "dump", "manifest.json")) as f:
        manifest = json.load(f)
    excluded = excluded_names(manifest)

    archive = json.loads(sh(["borgmatic", "-c", bm_conf, "repo-list", "--json"], env=env).stdout)[0]["archives"][-1][
        "name"
    ]
    listing = sh(["borg", "list", "--format", "{path}{NL}", f"{repo}::{archive}"], env=env).stdout.splitlines()
    print(f"archive {archive}: {len(listing)} entries; a few of them:")
    for p in [x for x in listing if x.endswith(("mailboxes.json", "manifest.json", "imapd.conf", "cyrus.header"))][:6]:
        print(f"  /{p}")

    a.stop()
    t = time.monotonic()
    b, restore_log = restore_into_second_server(env, bm_conf, archive, a, workdir, work, lose_dbs=True)
    timings["extract + restore"] = time.monotonic() - t
    for ln in restore_log:
        print("  " + ln)
    after = imapview.snapshot(b, USERS, QUOTA_ROOTS)
    expected = expected_after_restore(before, excluded)
    differences = imapview.diff(expected, after)
    b.stop()

    boxes_b, msgs_b = imapview.count(after)
    print("\n== report")
    print(f"  before backup (A): {boxes} mailboxes, {msgs} messages")
    print(f"  after restore (B): {boxes_b} mailboxes, {msgs_b} messages")
    print(f"  excluded on purpose (messages not backed up): {', '.join(excluded) or 'none'}")
    for k, v in timings.items():
        print(f"  {k:18} {v:6.2f} s")
    for k, v in manifest.get("timings", {}).items():
        print(f"  before/{k:11} {v:6.3f} s")
    if differences:
        print(f"  RESULT: {len(differences)} difference(s) between A and the restored B:")
        for d in differences[:20]:
            print("    " + d)
    else:
        print(
            "  RESULT: identical — every mailbox, UID, message, flag, \\Seen, subscription, ACL, "
            "METADATA entry, Sieve script and quota matches (excluded folders are empty, as configured)"
        )
    print(f"  total {time.monotonic() - t_all:.1f} s")
    if not keep:
        a.destroy()
        b.destroy()
        shutil.rmtree(workdir, ignore_errors=True)
    return 1 if differences else 0


def restore_into_second_server(env, bm_conf, archive, a, workdir, work, lose_dbs=False):
    """Extract `archive` under <workdir>/b-root and bring it up as a second
    server (paths relocated under b-root) with `borg-cyrus restore full`.
    lose_dbs deletes mailboxes.db and annotations.db first, so they must come
    back from the dumps. Returns (running Sandbox, restore log lines)."""
    b_root = os.path.join(workdir, "b-root")
    if os.path.exists(b_root):
        shutil.rmtree(b_root)
    os.makedirs(b_root)
    sh(["borgmatic", "-c", bm_conf, "extract", "--archive", archive, "--destination", b_root], env=env)
    # borg extract creates the parents above the archived paths as root, 0700
    for dirpath, dirnames, _ in os.walk(b_root):
        if os.stat(dirpath).st_uid == 0:
            os.chmod(dirpath, 0o755)
        dirnames[:] = [d for d in dirnames if os.stat(os.path.join(dirpath, d)).st_uid == 0]
    relocated = {"configdirectory": b_root + a.confdir, "sievedir": b_root + a.sievedir}
    relocated.update({f"partition-{n}": b_root + p for n, p in a.partitions.items()})
    b = Sandbox(os.path.join(workdir, "b"), partitions=tuple(a.partitions), layout=relocated)
    b.write_config()
    b.make_dirs()
    log = []
    if lose_dbs:
        removed = []
        for db in ("mailboxes.db", "annotations.db"):
            p = os.path.join(b.confdir, db)
            if os.path.exists(p):
                os.unlink(p)
                removed.append(db)
        log.append(
            f"restoring into Cyrus B (port {b.port}); deleted {', '.join(removed)} from the extracted "
            "tree so they must come back from the dumps"
        )
    b_conf = os.path.join(workdir, "borg-cyrus-b.yaml")
    write_yaml(
        b_conf,
        {
            "imapd_conf": b.imapd_conf,
            "cyrus_conf": b.cyrus_conf,
            "work_directory": work + "-b",
            "service": b.borg_cyrus_service(),
        },
    )
    r = sh(
        [
            sys.executable,
            "-m",
            "borg_cyrus",
            "-c",
            b_conf,
            "restore",
            "full",
            "--start",
            "--dump-dir",
            b_root + os.path.join(work, "dump"),
        ],
        env=env,
    )
    log.extend(r.stderr.splitlines())
    b.wait_ready()
    return b, log
