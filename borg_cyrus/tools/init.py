"""`borg-cyrus init`: inspect the host (tools/inspect_host.py), write a
commented /etc/borg-cyrus.yaml and a borgmatic config built from the shipped
sample-borgmatic.yaml, validate both, print the next commands.

Nothing is written before every check passed; an existing file is never
replaced without --force; both files are 0600.
"""

import argparse
import datetime
import os
import re
import shlex
import shutil
import socket
import stat
import sys
import tempfile

import yaml

from borg_cyrus import config as config_mod
from borg_cyrus import state as state_mod
from borg_cyrus.errors import BorgCyrusError, ConfigError
from borg_cyrus.execute import Runner
from borg_cyrus.tools import inspect_host

NAME = "init"
NEEDS_ROOT = False
DEFAULT_BORGMATIC = "/etc/borgmatic.d/cyrus.yaml"
DEFAULT_PASSPHRASE = "/etc/borgmatic/passphrase"
ENCRYPTIONS = (
    "none",
    "repokey-blake2",
    "repokey",
    "keyfile-blake2",
    "keyfile",
    "authenticated-blake2",
    "authenticated",
)
MODE_HELP = {
    "btrfs": "read-only btrfs snapshots, mounted at a stable path; Cyrus keeps running",
    "zfs": "ZFS snapshots, mounted at a stable path; Cyrus keeps running",
    "lvm": "LVM snapshots (lvcreate -s), mounted at a stable path; Cyrus keeps running",
    "stop-master": "Cyrus is stopped for the whole backup and started again afterwards",
    "rsync-staging": "Cyrus is stopped for one rsync to a staging copy; the copy is backed up",
    "live": "the running server is read as it is (no consistency)",
}


def add_parser(sub):
    p = sub.add_parser("init", help="inspect this host; write /etc/borg-cyrus.yaml and a borgmatic config")
    p.add_argument("-n", "--dry-run", action="store_true", default=argparse.SUPPRESS, help="print, write nothing")
    p.add_argument("--imapd-conf", default="/etc/imapd.conf", metavar="FILE", help="default /etc/imapd.conf")
    p.add_argument("--cyrus-conf", metavar="FILE", help="default: cyrus.conf next to imapd.conf, else /etc/cyrus.conf")
    p.add_argument("--repository", help="borg repository path or ssh:// URL (asked when stdin is a terminal)")
    p.add_argument("--encryption", choices=ENCRYPTIONS, help="borg encryption for repo-create (asked on a terminal)")
    p.add_argument(
        "--passphrase-file",
        default=DEFAULT_PASSPHRASE,
        metavar="FILE",
        help="encryption_passcommand reads it; created (random, 0600) when missing",
    )
    p.add_argument("--mode", choices=sorted(MODE_HELP), help="use this mode instead of the one that fits")
    p.add_argument("--work-directory", default="/var/lib/borg-cyrus", metavar="DIR")
    p.add_argument(
        "--service",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a service: key (VALUE is YAML), repeatable, e.g. manager=command "
        "pidfile=/run/cyrus-master.pid 'start_command=[/usr/sbin/cyrmaster, -d]' (non-systemd hosts, tests)",
    )
    p.add_argument("--borg-cyrus-config", metavar="PATH", help=f"default -c, else {config_mod.DEFAULT_PATH}")
    p.add_argument(
        "--borgmatic-config",
        metavar="PATH",
        help=f"write a whole borgmatic config here (default "
        f"{DEFAULT_BORGMATIC}, or only a snippet to merge when borgmatic already has a config)",
    )
    p.add_argument("--force", action="store_true", help="replace existing files")


def _service_overrides(items):
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--service {item!r}: write KEY=VALUE, e.g. manager=command")
        try:
            out[key.strip()] = yaml.safe_load(value)
        except yaml.YAMLError:
            raise ConfigError(f"--service {item!r}: VALUE is not YAML") from None
    return out


def _ask(what, default, given, choices=None):
    if given:
        return given
    if not sys.stdin.isatty():
        if what == "repository":
            raise ConfigError("--repository is missing (stdin is not a terminal, so it cannot be asked)")
        raise ConfigError(f"--{what} is missing (stdin is not a terminal); use one of: {', '.join(choices)}")
    hint = f" [{default}]" if default else ""
    opts = f" ({', '.join(choices)})" if choices else ""
    while True:
        answer = input(f"{what}{opts}{hint}: ").strip() or default
        if answer and (not choices or answer in choices):
            return answer


def _dump(key, value):
    return yaml.safe_dump({key: value}, sort_keys=False, default_flow_style=False, allow_unicode=True)


def render_borg_cyrus(plan, service, service_why, imapd_conf, cyrus_conf, work_dir, facts_note=""):
    """The commented borg-cyrus config."""
    host = socket.gethostname()
    now = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    lines = [
        f"# borg-cyrus configuration, written by `borg-cyrus init` on {host} ({now}).",
        "# Keys not set here have their defaults: `borg-cyrus config show` prints them all,",
        "# README.md (Configuration) explains each one.",
        "",
        "# Cyrus's own configuration; every location is read from it.",
        _dump("imapd_conf", imapd_conf) + _dump("cyrus_conf", cyrus_conf),
        "# Why this mode:",
        *[f"#   {r}" for r in plan.reasons],
        *([f"# {facts_note}"] if facts_note else []),
        f"# {plan.mode}: {MODE_HELP.get(plan.mode, '')}.",
        _dump("mode", plan.mode),
    ]
    for key, value in plan.settings.items():
        lines.append(_dump(key, value))
    lines += [
        f"# How Cyrus is stopped and started (found: {service_why}).",
        _dump("service", service),
        "# dump/ (archived), the patterns file (borgmatic's patterns_from), the run state, the lock.",
        _dump("work_directory", work_dir),
        "# Mailbox-name globs whose messages are left out (off: nothing is lost), e.g.:",
        "# exclude:",
        '#   mailboxes: ["user/*/Junk", "user/*/Trash", "user/*/Trash/**"]',
        "",
    ]
    return "\n".join(lines)


def hook_command(bc_path, action):
    if bc_path == config_mod.DEFAULT_PATH:
        return f"borg-cyrus {action}"
    return f"borg-cyrus -c {shlex.quote(bc_path)} {action}"


def render_borgmatic(sample_text, repo, patterns_file, bc_path, passcommand=None):
    """The shipped sample with the repository, the patterns file, the hook
    lines (naming a non-default borg-cyrus config) and the passcommand
    changed; its comments kept. Falls back to a plain dump when the sample's
    text is not shaped as expected."""
    want = yaml.safe_load(sample_text)
    want["repositories"] = [{"path": repo, "label": "cyrus"}]
    want["patterns_from"] = [patterns_file]
    for cmd in want.get("commands") or []:
        cmd["run"] = [
            re.sub(r"^borg-cyrus (before|after)( --\S+)*$", lambda m: hook_command(bc_path, m[0][11:]), r)
            for r in cmd["run"]
        ]
    if passcommand:
        want["encryption_passcommand"] = passcommand
    repo_block = _dump("repositories", want["repositories"])
    if passcommand:
        repo_block += "# the passphrase of the repository's key (keep a copy off this machine)\n"
        repo_block += _dump("encryption_passcommand", passcommand)
    text = re.sub(r"(?m)^repositories:\n(?:[ -].*\n)+", lambda m: repo_block, sample_text, count=1)
    text = re.sub(r"(?m)^(patterns_from:\n)(?:  - .*\n)+", lambda m: m[1] + f"  - {patterns_file}\n", text, count=1)
    text = re.sub(
        r"(?m)^(\s+- )borg-cyrus ((?:before|after)(?: --\S+)*)$", lambda m: m[1] + hook_command(bc_path, m[2]), text
    )
    text = re.sub(r"(?m)^# Change the repository;.*\n", "", text)
    text = "# Written by `borg-cyrus init` from sample-borgmatic.yaml.\n" + text
    if yaml.safe_load(text) == want:
        return text
    return "# Written by `borg-cyrus init` (from sample-borgmatic.yaml).\n" + yaml.safe_dump(want, sort_keys=False)


def snippet(patterns_file, bc_path):
    return (
        "patterns_from:\n"
        f"  - {patterns_file}\n"
        "commands:\n"
        f"  - {{before: configuration, when: [create], run: [{hook_command(bc_path, 'before')}]}}\n"
        f"  - {{after: configuration, when: [create], states: [finish], run: [{hook_command(bc_path, 'after')}]}}\n"
        f"  - {{after: configuration, when: [create], states: [fail], run: [{hook_command(bc_path, 'after --failed')}]}}\n"
    )


def merged(existing_path, snippet_text):
    """The existing borgmatic config with the snippet merged in (for validation), or None."""
    try:
        with open(existing_path) as f:
            data = yaml.safe_load(f) or {}
    except (OSError, yaml.YAMLError):
        return None
    add = yaml.safe_load(snippet_text)
    for key in ("patterns_from", "commands"):
        data[key] = list(data.get(key) or []) + add[key]
    return yaml.safe_dump(data, sort_keys=False)


def borgmatic_bin():
    return shutil.which("borgmatic") or os.path.join(os.path.dirname(sys.executable), "borgmatic")


def validate(bc_path, bm_path, runner, names=None):
    """(ok, report lines): borgmatic's own validator and borg-cyrus's
    (names: what to call the files in the report, e.g. for dry-run copies)."""
    names = names or {}
    from borg_cyrus.context import load_config

    ok, out = True, []
    if bm_path:
        try:
            r = runner.run([borgmatic_bin(), "config", "validate", "-c", bm_path], changes=False, check=False)
            good = r.returncode == 0
            said = (r.stderr.decode(errors="replace") + r.text).strip().splitlines()
            out.append(
                f"borgmatic config validate -c {names.get(bm_path, bm_path)}: "
                + ("valid" if good else "INVALID: " + " ".join(said[-3:]))
            )
            ok = ok and good
        except BorgCyrusError as e:
            out.append(f"borgmatic config validate -c {names.get(bm_path, bm_path)}: not run ({e})")
    try:
        load_config(bc_path)
        out.append(f"borg-cyrus -c {names.get(bc_path, bc_path)} config validate: valid")
    except BorgCyrusError as e:
        ok = False
        out.append(f"borg-cyrus -c {names.get(bc_path, bc_path)} config validate: INVALID: {e}")
    return ok, out


def write_private(path, text, force):
    """Write text to path, mode 0600 (O_EXCL unless force)."""
    os.makedirs(os.path.dirname(path) or ".", 0o700, exist_ok=True)
    flags = os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | (os.O_TRUNC if force else os.O_EXCL)
    try:
        fd = os.open(path, flags, 0o600)
    except OSError as e:
        raise BorgCyrusError(f"{path}: cannot write it: {e.strerror}") from None
    with os.fdopen(fd, "w") as f:
        os.fchmod(f.fileno(), 0o600)
        f.write(text)


def check_passphrase_file(path):
    """An existing passphrase file is used only if nobody but root could have
    written or read it: a regular file (not a symlink) of root's (or of this
    user's), no group or other permissions, in a directory nobody else can
    change. init's own are like that."""
    d = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(d):
        try:
            os.close(state_mod.open_private_dir(d))
        except BorgCyrusError as e:
            raise ConfigError(f"passphrase file {path}: {e}") from None
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    me = os.geteuid()
    why = None
    if stat.S_ISLNK(st.st_mode) or not stat.S_ISREG(st.st_mode):
        why = "is a symlink" if stat.S_ISLNK(st.st_mode) else "is not a regular file"
    elif st.st_uid not in (0, me):
        why = f"belongs to uid {st.st_uid}, not root"
    elif st.st_mode & 0o077:
        why = f"has mode {stat.S_IMODE(st.st_mode):04o} (group or others may read or change it)"
    if why:
        raise ConfigError(
            f"passphrase file {path} {why}: not using it (someone else may know the key's passphrase); remove "
            f"it so init writes a new one, or make it root's and private (chown root: {path}; chmod 600 {path})"
        )


def _check_input(args, bc_path, bm_path):
    conf = args.imapd_conf
    if not os.path.exists(conf):
        raise ConfigError(f"{conf} does not exist; is Cyrus installed? pass its imapd.conf with --imapd-conf FILE")
    if not os.path.isfile(conf) or not os.access(conf, os.R_OK):
        raise ConfigError(f"{conf} is not a readable file; run init as root or pass --imapd-conf FILE")
    for path in (bc_path, bm_path):
        if path and os.path.lexists(path) and not args.force:
            raise ConfigError(f"{path} exists; not replacing it (pass --force to replace it)")
        if path and not path.startswith("/"):
            raise ConfigError(f"{path}: give an absolute path")


def run(args):
    from borg_cyrus.cyrus import layout as layout_mod
    from borg_cyrus.tools.demo import sample_path

    dry = getattr(args, "dry_run", False)
    bc_path = os.path.abspath(args.borg_cyrus_config or args.config or config_mod.DEFAULT_PATH)
    existing = [] if args.borgmatic_config else inspect_host.existing_borgmatic()
    bm_path = (
        os.path.abspath(args.borgmatic_config) if args.borgmatic_config else (None if existing else DEFAULT_BORGMATIC)
    )
    _check_input(args, bc_path, bm_path)
    runner = Runner(dry_run=dry)
    cyrus_conf = args.cyrus_conf or os.path.join(os.path.dirname(os.path.abspath(args.imapd_conf)), "cyrus.conf")
    cyrus_conf = cyrus_conf if os.path.exists(cyrus_conf) or args.cyrus_conf else "/etc/cyrus.conf"
    lay = layout_mod.discover(os.path.abspath(args.imapd_conf))
    tools = layout_mod.find_tools()
    facts = inspect_host.filesystems(lay, runner)
    work_dir = os.path.abspath(args.work_directory)
    size = inspect_host.data_size([f.path for f in facts if f.exists])
    plan = inspect_host.plan_mode(facts, size, inspect_host.free_bytes(work_dir))
    if args.mode and args.mode != plan.mode:
        plan = inspect_host.Plan(args.mode, reasons=plan.reasons + [f"mode {args.mode} given with --mode"])
    service, service_why = inspect_host.detect_service(runner, tools, _service_overrides(args.service))
    note = "" if tools.directory else "Cyrus tools not found: set cyrus_tools_directory"
    bc_text = render_borg_cyrus(
        plan, service, service_why, os.path.abspath(args.imapd_conf), cyrus_conf, work_dir, note
    )
    patterns_file = os.path.join(work_dir, "patterns")

    encryption = args.encryption
    if bm_path:
        known = inspect_host.repositories(inspect_host.existing_borgmatic())
        repo = _ask("repository", known[0][1] if known else None, args.repository)
        encryption = _ask("encryption", "repokey-blake2", args.encryption, ENCRYPTIONS)
        if encryption != "none":
            check_passphrase_file(args.passphrase_file)  # before anything is written
        passcommand = None if encryption == "none" else f"cat {shlex.quote(args.passphrase_file)}"
        with open(sample_path("sample-borgmatic.yaml")) as f:
            bm_text = render_borgmatic(f.read(), repo, patterns_file, bc_path, passcommand)
    else:
        hooked = [p for p in existing if inspect_host.has_hooks(p)]
        bm_text = None if hooked else snippet(patterns_file, bc_path)

    with tempfile.TemporaryDirectory(prefix="borg-cyrus-init-") as tmp:
        if dry:
            check_bc, check_bm = os.path.join(tmp, "borg-cyrus.yaml"), os.path.join(tmp, "borgmatic.yaml")
            write_private(check_bc, bc_text, False)
            print(f"# would write {bc_path} (mode 0600):\n{bc_text}")
            if bm_path:
                write_private(check_bm, bm_text, False)
                print(f"# would write {bm_path} (mode 0600):\n{bm_text}")
        else:
            check_bc, check_bm = bc_path, bm_path
            write_private(bc_path, bc_text, args.force)
            print(f"wrote {bc_path} (mode {plan.mode})")
            if bm_path:
                write_private(bm_path, bm_text, args.force)
                print(f"wrote {bm_path}")
                if encryption != "none" and not os.path.exists(args.passphrase_file):
                    write_private(args.passphrase_file, os.urandom(32).hex() + "\n", False)
                    print(f"wrote {args.passphrase_file} (a random passphrase: keep a copy off this machine)")
        if not bm_path:
            check_bm = None
            if bm_text is None:
                print(f"{hooked[0]} already runs the borg-cyrus hooks: no borgmatic config written")
            else:
                print(f"borgmatic already has a config ({existing[0]}): add these lines to it (nothing written):")
                print(bm_text)
                m = merged(existing[0], bm_text)
                if m is not None:
                    check_bm = os.path.join(tmp, "merged.yaml")
                    write_private(check_bm, m, False)
        names = {
            check_bc: f"{bc_path} (a copy in {tmp})" if dry else bc_path,
            check_bm: f"{existing[0]} + the lines above (merged in a copy)"
            if not bm_path
            else (f"{bm_path} (a copy in {tmp})" if dry else bm_path),
        }
        ok, lines = validate(check_bc, check_bm, Runner(), names)
    for line in lines:
        print(line)
    _next_steps(bc_path, bm_path or (existing[0] if existing else None), encryption)
    return 0 if ok else 1


def _next_steps(bc_path, bm_path, encryption):
    c = "" if bm_path in (None, DEFAULT_BORGMATIC, "/etc/borgmatic/config.yaml") else f" -c {shlex.quote(bm_path)}"
    bc = "" if bc_path == config_mod.DEFAULT_PATH else f" -c {shlex.quote(bc_path)}"
    bmopt = f" --borgmatic-config {shlex.quote(bm_path)}" if c else ""
    print("next:")
    if encryption:
        print(f"  borgmatic{c} repo-create --encryption {encryption} --make-parent-dirs")
    print(f"  borgmatic{c} create --verbosity 1")
    print(f"  borg-cyrus{bc} verify{bmopt}")
    if encryption and encryption != "none":
        print(f"  borgmatic{c} key export --path /root/borg-cyrus-repo-key.txt   # then copy it off this machine")
    # the shipped units (README: systemd units and timers); they run borgmatic's own lookup
    units = os.path.join(sys.prefix, "share", "borg-cyrus", "contrib", "systemd")
    print(f"  cp {units}/* /etc/systemd/system/ && systemctl daemon-reload")
    print("  systemctl enable --now borgmatic-cyrus.timer borg-cyrus-verify.timer   # nightly backup, weekly drill")
    if c:
        print(f"  # the units run plain `borgmatic`: add -c {shlex.quote(bm_path)} to their ExecStart (systemctl edit)")
