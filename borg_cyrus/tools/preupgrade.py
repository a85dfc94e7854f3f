"""`borg-cyrus pre-upgrade`: a database-only backup taken right before a Cyrus
package changes (the apt hook in contrib/apt runs it).

It is `borgmatic create` with the hourly, dumps-only borgmatic configuration
(its `borg-cyrus before --dumps-only` hook writes the dumps), under an
archive name that says why: `{hostname}-pre-upgrade-<time>`. Neither
sample-borgmatic.yaml (`{hostname}-[0-9]*`) nor sample-borgmatic-hourly.yaml
(`{hostname}-dumps-*`) matches that name, so no prune removes it. The run
fails — and the apt hook with it, before anything is unpacked — unless
borgmatic exits 0 **and** reports the archive it made (a run skipped because
a nightly backup is going on makes none).

apt waits for it, so it has one deadline, --timeout (DEFAULT_TIMEOUT, a few
minutes), for everything: another borg-cyrus run still going on is waited
for during at most half of it (and named if it does not end; the
`before --dumps-only` hook would otherwise wait busy.wait), borg waits for a
repository lock at most half of what is left (borgmatic --lock-wait), and
borgmatic is killed with everything it started at the deadline.
"""

import json
import logging
import os
import sys
import time

from borg_cyrus.errors import BorgCyrusError, CommandError, ConfigError
from borg_cyrus.execute import Runner, _tail

NAME = "pre-upgrade"
NEEDS_ROOT = True

DEFAULT_CONFIG = "/etc/borg-cyrus/borgmatic-hourly.yaml"
DEFAULT_TIMEOUT = 180  # seconds apt may wait for the whole backup
ARCHIVE_NAME_FORMAT = "{hostname}-pre-upgrade-{now:%Y-%m-%dT%H:%M:%S.%f}"

log = logging.getLogger(__name__)


def add_parser(sub):
    p = sub.add_parser(
        NAME,
        help="database-only backup before a Cyrus package changes (borgmatic create with the hourly config)",
    )
    p.add_argument(
        "--borgmatic-config",
        metavar="FILE",
        default=DEFAULT_CONFIG,
        help=f"the dumps-only borgmatic configuration (default {DEFAULT_CONFIG}; see sample-borgmatic-hourly.yaml)",
    )
    p.add_argument("--reason", metavar="TEXT", help="archive comment, e.g. the package versions that change")
    p.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_TIMEOUT,
        metavar="SECONDS",
        help=f"give up after this long, waits for other runs and locks included ({DEFAULT_TIMEOUT})",
    )
    return p


def borgmatic_program():
    """The borgmatic installed next to this Python (the venv's), else PATH's."""
    own = os.path.join(os.path.dirname(sys.executable), "borgmatic")
    return own if os.access(own, os.X_OK) else "borgmatic"


def command(args, lock_wait=None):
    argv = [borgmatic_program(), "-c", args.borgmatic_config, "--archive-name-format", ARCHIVE_NAME_FORMAT]
    if lock_wait is not None:
        argv += ["--lock-wait", str(max(1, int(lock_wait)))]
    argv += ["create", "--json"]
    if args.reason:
        argv += ["--comment", f"borg-cyrus pre-upgrade: {args.reason}"]
    return argv


def archives_made(stdout):
    """[(repository, archive name)] from `borgmatic create --json`."""
    try:
        data = json.loads(stdout or "[]")
    except ValueError:
        return []
    out = []
    for entry in data if isinstance(data, list) else [data]:
        if isinstance(entry, dict) and isinstance(entry.get("archive"), dict) and entry["archive"].get("name"):
            repo = (entry.get("repository") or {}).get("location", "?")
            out.append((repo, entry["archive"]["name"]))
    return out


def run(args):
    cfg = args.borgmatic_config
    if not os.path.isfile(cfg):
        raise ConfigError(
            f"pre-upgrade: borgmatic configuration {cfg} does not exist; install sample-borgmatic-hourly.yaml "
            "there (README: Hourly database backups) or pass --borgmatic-config FILE"
        )
    if args.timeout <= 0:
        raise ConfigError(f"pre-upgrade: --timeout {args.timeout:g}: give a number of seconds above 0")
    t0 = time.monotonic()
    deadline = t0 + args.timeout
    if not args.dry_run:
        wait_for_other_runs(args, t0 + args.timeout / 2)
    left = deadline - time.monotonic()
    argv = command(args, lock_wait=left / 2)
    runner = Runner(dry_run=args.dry_run)
    env = {"BORG_CYRUS_CONFIG": os.path.abspath(args.config)} if args.config else None
    started = time.monotonic()
    try:
        r = runner.run(argv, check=False, timeout=max(1.0, left), env=env, what="borgmatic create")
    except CommandError as e:
        if time.monotonic() - started < max(1.0, left):  # not started at all
            raise BorgCyrusError(f"pre-upgrade: no database backup: {e}") from None
        raise BorgCyrusError(
            f"pre-upgrade: no database backup: borgmatic create with {cfg} did not finish within the "
            f"{args.timeout:g} s of --timeout and was killed (a repository that does not answer? a hook that "
            "hangs?); run it by hand to see where it waits"
        ) from None
    if r.skipped:
        return 0
    err = r.stderr.decode("utf-8", "replace")
    if args.verbose and err:
        sys.stderr.write(err if err.endswith("\n") else err + "\n")
    made = archives_made(r.text)
    if r.returncode != 0 or not made:
        why = f"exit {r.returncode}" if r.returncode else "exit 0 but no archive was made (skipped?)"
        raise BorgCyrusError(
            f"pre-upgrade: no database backup — borgmatic create with {cfg} failed ({why}): "
            f"{_last_error(err) or 'no output'}"
        )
    for repo, name in made:
        log.info("pre-upgrade: database backup %s in %s (%.1f s)", name, repo, time.monotonic() - t0)
    return 0


def wait_for_other_runs(args, until):
    """Wait until no other borg-cyrus run is going on (busy.going_on), at
    most until `until`; then an error naming it. A config that cannot be
    read is left to the backup's own hook to report."""
    from borg_cyrus.backup import busy
    from borg_cyrus.context import Context, load_config

    try:
        cfg, _plugins = load_config(args.config)
    except BorgCyrusError as e:
        log.debug("pre-upgrade: not checking for other runs: %s", e)
        return
    ctx = Context(config=cfg, layout=None, tools=None, runner=None, plugins=None)
    said = False
    while True:
        what = busy.going_on(ctx)
        if what is None:
            return
        if time.monotonic() >= until:
            raise BorgCyrusError(
                f"pre-upgrade: no database backup: {what}, and it did not end within "
                f"{args.timeout / 2:g} s (half of --timeout); wait for it to end, then run apt again"
            )
        if not said:
            log.info("pre-upgrade: %s; waiting for it (at most %.0f s)", what, until - time.monotonic())
            said = True
        time.sleep(min(1.0, max(0.05, until - time.monotonic())))


GENERIC = ("an error occurred", "error running actions for repository", "error running configuration")


def _last_error(text):
    """borgmatic's most telling line: the first specific one of its `summary:`
    block (the cause, not "An error occurred"), else its last line."""
    lines = [ln.strip() for ln in (text or "").splitlines() if ln.strip()]
    if "summary:" in lines:
        for ln in lines[lines.index("summary:") + 1 :]:
            if ln.startswith("Need some help?"):
                break
            if ln.lower().rstrip(".") not in GENERIC:
                return _tail(ln, 300)
    return _tail(lines[-1], 300) if lines else ""
