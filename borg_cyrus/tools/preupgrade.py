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
    p.add_argument("--timeout", type=float, default=1800, metavar="SECONDS", help="give up after this long (1800)")
    return p


def borgmatic_program():
    """The borgmatic installed next to this Python (the venv's), else PATH's."""
    own = os.path.join(os.path.dirname(sys.executable), "borgmatic")
    return own if os.access(own, os.X_OK) else "borgmatic"


def command(args):
    argv = [borgmatic_program(), "-c", args.borgmatic_config, "--archive-name-format", ARCHIVE_NAME_FORMAT]
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
    argv = command(args)
    runner = Runner(dry_run=args.dry_run)
    env = {"BORG_CYRUS_CONFIG": os.path.abspath(args.config)} if args.config else None
    t0 = time.monotonic()
    try:
        r = runner.run(argv, check=False, timeout=args.timeout or 0, env=env, what="borgmatic create")
    except CommandError as e:
        raise BorgCyrusError(f"pre-upgrade: no database backup: {e}") from None
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
