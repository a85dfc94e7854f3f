"""Command line: thin — parse, call, print."""

import argparse
import json
import logging
import os
import signal
import socket
import sys

from borg_cyrus import __version__, config as config_mod
from borg_cyrus.errors import BorgCyrusError
from borg_cyrus.tools import metrics

log = logging.getLogger("borg_cyrus")


def _priority(levelno):
    """syslog priority (sd-daemon(3), systemd.journal-fields(7)) of a log level."""
    return 3 if levelno >= logging.ERROR else 4 if levelno >= logging.WARNING else 6 if levelno >= logging.INFO else 7


class _Formatter(logging.Formatter):
    def __init__(self, journal=False, name=True):
        super().__init__()
        self.journal = journal
        self.name = name

    def format(self, record):
        msg = record.getMessage()
        level = (
            "error: " if record.levelno >= logging.ERROR else "warning: " if record.levelno >= logging.WARNING else ""
        )
        line = f"borg-cyrus: {level}{msg}" if self.name else f"{level}{msg}"
        if not self.journal:
            return line
        # sd-daemon(3): journald reads a priority prefix at the start of every line
        prio = _priority(record.levelno)
        return "\n".join(f"<{prio}>{part}" for part in line.split("\n"))


JOURNAL_SOCKET = "/run/systemd/journal/socket"


class JournalHandler(logging.Handler):
    """Records sent to journald's native socket, each with its PRIORITY
    (the protocol of systemd's sd_journal_send: one datagram of KEY=value
    lines; a value with a line break is KEY, a newline, its length as 64-bit
    little-endian, the value). journald names the unit from the sender's
    control group, which it cannot read once the sender has exited, so the
    unit is also sent as OBJECT_SYSTEMD_UNIT (`journalctl -u` matches it for
    root's messages). A record that cannot be sent at once goes to `fallback`."""

    def __init__(self, unit=None, path=None, fallback=None):
        super().__init__()
        self.path = path or JOURNAL_SOCKET
        self.fallback = fallback
        self.fields = {"SYSLOG_IDENTIFIER": "borg-cyrus", "SYSLOG_PID": str(os.getpid())}
        if unit:
            self.fields["OBJECT_SYSTEMD_UNIT"] = unit
        if os.environ.get("INVOCATION_ID"):
            self.fields["OBJECT_SYSTEMD_INVOCATION_ID"] = os.environ["INVOCATION_ID"]
        self.sock = None

    @staticmethod
    def encode(fields):
        out = []
        for key, value in fields.items():
            v = str(value).encode("utf-8", "replace")
            if b"\n" in v:
                out.append(key.encode() + b"\n" + len(v).to_bytes(8, "little") + v + b"\n")
            else:
                out.append(key.encode() + b"=" + v + b"\n")
        return b"".join(out)

    def emit(self, record):
        fields = {
            "MESSAGE": self.format(record),
            "PRIORITY": str(_priority(record.levelno)),
            **self.fields,
            "CODE_FILE": record.pathname,
            "CODE_LINE": str(record.lineno),
            "CODE_FUNC": record.funcName,
        }
        try:
            if self.sock is None:
                self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            # never wait for journald (it may be writing to a filesystem this run froze)
            self.sock.sendto(self.encode(fields), socket.MSG_DONTWAIT, self.path)
        except OSError:
            if self.fallback is not None and record.levelno < self.fallback.level:
                self.fallback.handle(record)

    def close(self):
        if self.sock is not None:
            self.sock.close()
            self.sock = None
        super().close()


def _stream_key(st):
    return f"{st.st_dev}:{st.st_ino}"


def stderr_is_journal(stream=None):
    """True when stderr is the journal stream systemd connected (JOURNAL_STREAM
    names its device and inode), not a pipe or file it was redirected to."""
    want = os.environ.get("JOURNAL_STREAM", "")
    try:
        st = os.fstat((stream or sys.stderr).fileno())
    except (OSError, ValueError, AttributeError):
        return False
    return bool(want) and want == _stream_key(st)


def stderr_reader_is_journal(stream=None, ppid=None):
    """True when stderr is a pipe read by a process whose own stderr is the
    journal stream: a hook run by borgmatic under a systemd unit. borgmatic
    logs what it reads at one level, so the journal would get every line at
    "info"."""
    want = os.environ.get("JOURNAL_STREAM", "")
    try:
        fd = (stream or sys.stderr).fileno()
        mine = _stream_key(os.fstat(fd))
        if not want or os.isatty(fd):
            return False
    except (OSError, ValueError, AttributeError):
        return False
    pid = os.getppid() if ppid is None else ppid
    for _ in range(8):  # through shells that pass our stderr on
        try:
            theirs = _stream_key(os.stat(f"/proc/{pid}/fd/2"))
            with open(f"/proc/{pid}/stat") as f:
                parent = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            return False
        if theirs == want:
            return True
        if theirs != mine or parent <= 1:
            return False
        pid = parent
    return False


def setup_logging(verbosity):
    """stderr, with sd-daemon priority prefixes when it is the journal. A hook
    whose output borgmatic re-logs into the journal sends its records to
    journald itself, each at its priority, and only errors to stderr (for
    borgmatic's summary of the failed hook): no line twice at the same place."""
    handler = logging.StreamHandler(sys.stderr)
    handlers = [handler]
    if stderr_is_journal():
        handler.setFormatter(_Formatter(journal=True))
    else:
        handler.setFormatter(_Formatter())
        if stderr_reader_is_journal() and os.path.exists(JOURNAL_SOCKET):
            from borg_cyrus.safety import cgroups

            handler.setLevel(logging.ERROR)
            journal = JournalHandler(unit=cgroups.own_unit(), fallback=handler)
            journal.setFormatter(_Formatter(name=False))
            handlers.append(journal)
    root = logging.getLogger("borg_cyrus")
    root.handlers[:] = handlers
    root.setLevel({-1: logging.WARNING, 0: logging.INFO}.get(verbosity, logging.DEBUG))
    root.propagate = False


def build_parser():
    p = argparse.ArgumentParser(
        prog="borg-cyrus",
        description=__doc__ and "Consistent, restorable Borg/borgmatic backups of a Cyrus IMAP server.",
    )
    p.add_argument("--version", action="version", version=f"borg-cyrus {__version__}")
    p.add_argument("-c", "--config", help=f"config file (default ${config_mod.ENV_VAR} or {config_mod.DEFAULT_PATH})")
    p.add_argument("-n", "--dry-run", action="store_true", help="show what would be done; change nothing")
    p.add_argument("-v", "--verbose", action="count", default=0)
    p.add_argument("-q", "--quiet", action="store_true")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    s = sub.add_parser("before", help="borgmatic `before` hook: freeze, dump, write the patterns file")
    s.add_argument("--force", action="store_true", help="take over a run whose owner still seems alive")
    s.add_argument(
        "--dumps-only",
        action="store_true",
        help="a database-only backup: dumps and configs, nothing stopped or frozen "
        "(patterns in <work_directory>/patterns-dumps; see sample-borgmatic-hourly.yaml)",
    )
    s = sub.add_parser("after", help="borgmatic `after` hook: undo what `before` did (idempotent)")
    s.add_argument("--force", action="store_true", help="tear down even if the owning backup still runs")
    s.add_argument("--failed", action="store_true", help="the backup failed (a `states: [fail]` hook): for the metrics")
    s.add_argument("--json", action="store_true", help="print the backup's summary (the metrics' values) as JSON")

    sub.add_parser("plugins", help="list plugins and the hooks they implement")
    c = sub.add_parser("config", help="config file tools")
    csub = c.add_subparsers(dest="config_command", required=True, metavar="ACTION")
    csub.add_parser("validate", help="check the config file; one line per problem")
    csub.add_parser("show", help="print the effective config (defaults filled in)")
    csub.add_parser("schema", help="print the JSON schema (with plugin keys)")
    d = sub.add_parser("doctor", help="show the discovered layout, tools, what is backed up and excluded")
    d.add_argument("--json", action="store_true")

    arch = argparse.ArgumentParser(add_help=False)
    ag = arch.add_argument_group("archive (read through borgmatic's configuration)")
    ag.add_argument(
        "--borgmatic-config",
        action="append",
        metavar="FILE",
        help="borgmatic configuration file or directory, repeatable (default: borgmatic's own lookup, "
        "/etc/borgmatic/config.yaml, /etc/borgmatic.d/, ~/.config/borgmatic/...)",
    )
    ag.add_argument("--repository", help="repository path or label, when borgmatic's configuration lists several")
    ag.add_argument("--archive", help="archive name (default: the latest)")
    # -n after the command too (as admins type it); absent, the global -n stands
    arch.add_argument("-n", "--dry-run", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    ag.add_argument(
        "--at",
        metavar="DATE",
        help="the newest archive made at or before DATE: 2026-11-24 (end of that day), '2026-11-24 03:00', "
        "yesterday, '3 days ago'",
    )
    stg = argparse.ArgumentParser(add_help=False)
    stg.add_argument(
        "--staging",
        metavar="DIR",
        help="private directory for extracted files (default: "
        "<work_directory>/staging; on the spool's filesystem files are moved, not copied)",
    )
    stg.add_argument("--keep-staging", action="store_true", help="keep the extracted files afterwards")

    r = sub.add_parser("restore", help="restore from an archive: list, user, mailbox, full")
    rsub = r.add_subparsers(dest="restore_command", required=True, metavar="WHAT")
    rl = rsub.add_parser("list", parents=[arch, stg], help="users, mailboxes, message counts and sizes of an archive")
    rl.add_argument("--user", help="only this user's mailboxes")
    rl.add_argument("--json", action="store_true")
    from borg_cyrus.restore import find, history, messages

    history.add_parser(rsub, [arch])
    find.add_parser(rsub, [])
    messages.add_parser(rsub, [arch, stg])
    ru = rsub.add_parser("user", parents=[arch, stg], help="bring one user back into the running server")
    ru.add_argument("user", metavar="USER")
    ru.add_argument(
        "--force",
        action="store_true",
        help="also restore into existing non-empty mailboxes (adds the archived messages they lack), "
        "and from an archive of another Cyrus version",
    )
    rm = rsub.add_parser("mailbox", parents=[arch, stg], help="bring one mailbox back, in place or --into a new folder")
    rm.add_argument("mailbox", metavar="NAME", help="admin namespace, e.g. 'user/bob/Archive 2019'")
    rm.add_argument("--into", metavar="FOLDER", help="restore as this new folder, e.g. user/bob/Restored-2026-11-26")
    rm.add_argument("--recursive", "-r", action="store_true", help="with its child folders")
    rm.add_argument(
        "--force",
        action="store_true",
        help="also restore into existing non-empty mailboxes (adds the archived messages they lack), "
        "and from an archive of another Cyrus version",
    )
    from borg_cyrus.restore import full

    rf = full.add_parser(rsub)

    for q in (ru, rm, rf):
        q.add_argument("--json", action="store_true", help="print a summary (the metrics' values) as JSON")
    v = sub.add_parser(
        "verify",
        parents=[arch],
        help="restore drill: extract an archive into a throwaway Cyrus "
        "and check every mailbox against the backup's records",
    )
    v.add_argument(
        "--deep",
        action="store_true",
        help="also check every message's bytes (SHA-1 against the index GUID, and as served over IMAP)",
    )
    v.add_argument(
        "--workdir",
        metavar="DIR",
        help="the directory the drill's private directory is made in (default: <work_directory>/verify; it and "
        "every directory above it must be root's and writable only by root; needs room for the whole archive)",
    )
    v.add_argument("--keep", action="store_true", help="keep the extracted archive and the throwaway server's files")
    v.add_argument("--json", action="store_true", help="print the report as JSON")

    dm = sub.add_parser("demo", help="throwaway Cyrus -> borgmatic create -> restore into a second Cyrus -> compare")
    dm.add_argument("--workdir", default="/tmp/borg-cyrus-demo")
    dm.add_argument("--mode", default="stop-master")
    dm.add_argument("--keep", action="store_true", help="keep the demo servers' files")
    for mod in _command_modules():
        mod.add_parser(sub)
    return p


# commands that live in a module of their own: NAME, NEEDS_ROOT, add_parser(sub), run(args)
COMMAND_MODULES = ("borg_cyrus.tools.preupgrade", "borg_cyrus.tools.init")


def _command_modules():
    import importlib

    return [importlib.import_module(m) for m in COMMAND_MODULES]


def load(args, need_layout=True):
    from borg_cyrus.context import build_context, load_config

    cfg, plugins = load_config(args.config)
    if not need_layout:
        return cfg, plugins, None
    return cfg, plugins, build_context(cfg, plugins, dry_run=args.dry_run)


def cmd_before(args):
    from borg_cyrus.backup import run as backup

    _, _, ctx = load(args)
    with metrics.Before(ctx, dumps_only=args.dumps_only) as run:
        summary = backup.before(ctx, force=args.force, dumps_only=args.dumps_only)
        run.ready(summary)
    if args.dry_run:
        sys.stdout.write(summary["patterns"])
    return 0


def cmd_after(args):
    from borg_cyrus.backup import run as backup

    _, _, ctx = load(args)
    with metrics.After(ctx, failed=args.failed, as_json=args.json):
        backup.after(ctx, force=args.force, failed=args.failed)
    return 0


def cmd_plugins(args):
    from borg_cyrus.plugins import Plugins

    plugins = Plugins()
    modes = {}
    for mode_name, _cls in plugins.modes().items():
        modes.setdefault(plugins.mode_plugin(mode_name), []).append(mode_name)
    for name, module, dist, hooks in plugins.describe():
        extra = f"  modes: {', '.join(sorted(modes[name]))}" if name in modes else ""
        origin = f"{module}" + (f" ({dist})" if dist and dist != "borg-cyrus" else "")
        print(f"{name:14} {origin}\n{'':14} hooks: {', '.join(hooks)}{extra}")
    return 0


def cmd_config(args):
    if args.config_command == "schema":
        from borg_cyrus.plugins import Plugins

        plugins = Plugins()
        print(json.dumps(config_mod.full_schema(plugins.config_schema_fragments(), plugins.modes()), indent=2))
        return 0
    cfg, _, _ = load(args, need_layout=False)
    if args.config_command == "show":
        import yaml

        sys.stdout.write(yaml.safe_dump(dict(cfg), sort_keys=False))
    else:
        print(f"{cfg.path}: valid")
    return 0


def cmd_doctor(args):
    from borg_cyrus.tools.doctor import doctor

    cfg, plugins, ctx = load(args)
    return doctor(ctx, as_json=args.json)


def cmd_restore(args):
    _, _, ctx = load(args)
    with metrics.restore_run(ctx, args):
        return _restore(args, ctx)


def _restore(args, ctx):
    if args.restore_command == "find":
        from borg_cyrus.restore import find

        return find.run(ctx, args)
    if args.restore_command == "history":
        from borg_cyrus.restore import archive as archive_mod, history

        repo = archive_mod.open_repository(args.borgmatic_config, args.repository, ctx.runner)
        return history.run(ctx, repo, mailbox=args.mailbox, user=args.user, as_json=args.json)
    if args.restore_command == "full":
        from borg_cyrus.restore.full import FullRestore

        if not args.dumps_from:
            FullRestore(ctx, args.dump_dir, force=args.force).run(start=args.start, search_index=args.search_index)
            return 0
        from borg_cyrus.restore.session import ArchiveSession

        with ArchiveSession(ctx, args.borgmatic_config, args.repository, args.dumps_from) as session:
            newer = session.load_dump()
            FullRestore(ctx, args.dump_dir, force=args.force, newer=newer).run(
                start=args.start, search_index=args.search_index
            )
        return 0
    from borg_cyrus.restore import listing
    from borg_cyrus.restore.mailbox import MailboxRestore
    from borg_cyrus.restore.session import ArchiveSession, with_lock
    from borg_cyrus.restore.user import UserRestore

    session = ArchiveSession(
        ctx, args.borgmatic_config, args.repository, args.archive, args.staging, args.keep_staging, at=args.at
    )
    with session:
        session.load_dump()
        if args.restore_command == "list":
            summary = listing.archive_summary(session)
            sys.stdout.write(
                listing.summary_json(summary) + "\n" if args.json else listing.format_list(summary, args.user)
            )
            return 0
        out = None if args.quiet else (lambda line: print(line, flush=True, file=sys.stderr if args.json else None))
        if args.restore_command == "user":
            job = UserRestore(ctx, session, force=args.force, out=out)
            with_lock(ctx, lambda: job.run(args.user))
        elif args.restore_command == "mailbox":
            job = MailboxRestore(ctx, session, force=args.force, out=out)
            with_lock(ctx, lambda: job.run(args.mailbox, into=args.into, recursive=args.recursive))
        else:
            from borg_cyrus.restore.messages import run_args

            run_args(ctx, session, args, out)
    return 0


def cmd_verify(args):
    from borg_cyrus.restore import verify

    from borg_cyrus.backup import run as backup

    _, _, ctx = load(args)
    with metrics.Run(ctx, "verify") as run:
        backup.recover_dead_run(ctx, "verify", take_lock=True)  # a dead nightly may have left Cyrus stopped
        return verify.run(ctx, args, run)


def cmd_demo(args):
    from borg_cyrus.tools.demo import run_demo

    return run_demo(args.workdir, mode=args.mode, keep=args.keep)


COMMANDS = {
    "before": cmd_before,
    "after": cmd_after,
    "plugins": cmd_plugins,
    "config": cmd_config,
    "doctor": cmd_doctor,
    "restore": cmd_restore,
    "verify": cmd_verify,
    "demo": cmd_demo,
}


# commands that stop, snapshot or read Cyrus, or write into its directories
NEEDS_ROOT = {"before", "after", "doctor", "restore", "verify", "demo"}


def _on_sigterm(signum, frame):
    raise SystemExit(128 + signum)


def main(argv=None):
    args = build_parser().parse_args(argv)
    setup_logging(-1 if args.quiet else args.verbose)
    signal.signal(signal.SIGTERM, _on_sigterm)
    signal.signal(signal.SIGHUP, _on_sigterm)
    if args.command in NEEDS_ROOT and os.geteuid() != 0:
        log.error(
            "borg-cyrus %s must run as root (it reads every Cyrus file, stops or snapshots Cyrus and "
            "runs borg as root); run it as root, e.g. from root's borgmatic",
            args.command,
        )
        return 2
    modules = {m.NAME: m for m in _command_modules()}
    if args.command in modules and modules[args.command].NEEDS_ROOT and os.geteuid() != 0:
        log.error("borg-cyrus %s must run as root", args.command)
        return 2
    try:
        if args.command in modules:
            return modules[args.command].run(args)
        return COMMANDS[args.command](args)
    except BorgCyrusError as e:
        log.error("%s", e)
        return e.exit_code
    except KeyboardInterrupt:
        log.error("interrupted")
        return 130
    except Exception as e:
        if args.verbose:
            raise
        log.error("unexpected %s: %s (run with -v for the traceback)", e.__class__.__name__, e)
        return 1


if __name__ == "__main__":
    sys.exit(main())
