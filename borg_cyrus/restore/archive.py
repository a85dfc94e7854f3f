"""Reading archives: borgmatic's configuration, borg's commands.

The repository, its passphrase (encryption_passphrase, encryption_passcommand,
credential hooks), ssh command, `local_path`/`remote_path`, `lock_wait` and
the archive name format all come from borgmatic's own configuration, loaded
with borgmatic's own code (default lookup: /etc/borgmatic/config.yaml,
/etc/borgmatic.d/, ~/.config/borgmatic/...), so a restore needs nothing
the backup did not. borg itself is then run directly (through the one Runner): one `borg list`
or `borg extract` costs ~0.3 s, one `borgmatic` run ~2 s.

Only what is asked for is extracted (`borg extract ARCHIVE PATH...`), into a
private directory; paths the archive lacks are reported, not fatal, so
optional files (a user without sieve scripts) need no prior listing.
"""

import contextlib
import json
import logging
import os
import shlex

from borg_cyrus.errors import BorgCyrusError, CommandError, ConfigError
from borg_cyrus.execute import Runner

log = logging.getLogger(__name__)


class ArchiveError(BorgCyrusError):
    pass


def _borgmatic_modules():
    try:
        import borgmatic.borg.environment as environment
        import borgmatic.borg.flags as flags
        import borgmatic.config.collect as collect
        import borgmatic.config.load as load
        import borgmatic.config.validate as validate
    except ImportError as e:  # pragma: no cover - borgmatic is a dependency
        raise ConfigError(f"borgmatic is not installed or too old ({e}); install borgmatic 2.1") from None
    return environment, flags, collect, load, validate


@contextlib.contextmanager
def _fast_schema(load, schema_path):
    """borgmatic's parse_configuration, with its own schema read by PyYAML's C
    loader instead of ruamel (0.25 s of every restore command): the same data."""
    import yaml

    original = load.load_configuration
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

    def load_configuration(filename, *args, **kwargs):
        if filename == schema_path and not args and not kwargs:
            with open(filename, encoding="utf-8") as f:
                return yaml.load(f, Loader=loader)
        return original(filename, *args, **kwargs)

    load.load_configuration = load_configuration
    try:
        yield
    finally:
        load.load_configuration = original


def load_borgmatic_configs(paths=None):
    """[(filename, config dict)] of borgmatic's configuration files."""
    _env, _flags, collect, load, validate = _borgmatic_modules()
    paths = list(paths or collect.get_default_config_paths())
    files = list(collect.collect_config_filenames(paths))
    if not files:
        raise ConfigError(
            "no borgmatic configuration found (looked in " + ", ".join(paths) + "); pass --borgmatic-config FILE"
        )
    out = []
    for name in files:
        if not os.path.exists(name):
            raise ConfigError(f"borgmatic configuration {name} does not exist; fix --borgmatic-config")
        try:
            with _fast_schema(load, validate.schema_filename()):
                config, _paths, _logs = validate.parse_configuration(name, validate.schema_filename(), {}, None)
        except Exception as e:
            raise ConfigError(f"borgmatic configuration {name} is invalid: {' '.join(str(e).split())}") from None
        out.append((name, config))
    return out


def _installed_borg_version(borg):
    """The version of the borg that `borg` runs when it is the one installed
    with borg-cyrus (its package metadata; saves a `borg --version`, 0.4 s)."""
    import importlib.metadata
    import shutil
    import sys

    exe = shutil.which(borg)
    if not exe or os.path.dirname(os.path.realpath(exe)) != os.path.realpath(os.path.join(sys.prefix, "bin")):
        return None
    try:
        return importlib.metadata.version("borgbackup")
    except importlib.metadata.PackageNotFoundError:
        return None


class Repository:
    """One borg repository from borgmatic's configuration."""

    def __init__(self, config, repo, config_file, runner=None):
        _env, _flags, _collect, load, validate = _borgmatic_modules()
        # per-repository options override the top-level ones, as in borgmatic
        self.config = (
            load.merge_repository_configuration(repo, config)
            if hasattr(load, "merge_repository_configuration")
            else config
        )
        self.config_file = config_file
        self.label = repo.get("label")
        self.path = validate.normalize_repository_path(repo["path"], self.config.get("working_directory"))
        self.borg = self.config.get("local_path") or "borg"
        self.runner = runner or Runner()
        self._version = None

    def __str__(self):
        return f"{self.path}" + (f" ({self.label})" if self.label else "")

    # -- running borg ------------------------------------------------------
    def _env(self):
        environment, *_ = _borgmatic_modules()
        try:
            return environment.make_environment(self.config)
        except Exception as e:
            raise ArchiveError(f"cannot prepare borg's environment from {self.config_file}: {e}") from None

    def _common(self):
        out = []
        if self.config.get("remote_path"):
            out += ["--remote-path", self.config["remote_path"]]
        if self.config.get("lock_wait"):
            out += ["--lock-wait", str(self.config["lock_wait"])]
        return out

    def run(self, args, cwd=None, ok_codes=(0,), what="borg"):
        env = self._env()
        env.setdefault("BORG_EXIT_CODES", "modern")
        fd = env.get("BORG_PASSPHRASE_FD")
        argv = [self.borg, *args]
        try:
            # reading an archive into a private directory changes nothing: it runs under --dry-run too
            proc = self.runner.run(
                argv,
                cwd=cwd,
                env=env,
                pass_fds=(int(fd),) if fd else (),
                check=False,
                changes=False,
                timeout=0,
                what=what,
            )
        except CommandError:
            raise ArchiveError(
                f"borg not found ({self.borg}); install borg 1.4 or set local_path in {self.config_file}"
            ) from None
        finally:
            if fd:
                try:
                    os.close(int(fd))
                except OSError:
                    pass
        if proc.returncode not in ok_codes:
            msgs = [m for m in _log_messages(proc.stderr, plain=False) if m] or [_last_line(proc.stderr)]
            raise ArchiveError(
                f"{what} failed (exit {proc.returncode}): {_clip('; '.join(msgs))} [command: {shlex.join(argv)}]"
            )
        return proc

    def version(self):
        if self._version is None:
            self._version = _installed_borg_version(self.borg)
        if self._version is None:
            out = self.run(["--version"], what="borg --version").stdout.decode()
            self._version = out.split()[1] if len(out.split()) > 1 else "1.4.0"
        return self._version

    # -- archives ----------------------------------------------------------
    def archives(self, all_names=False):
        """Archive names, oldest first (those matching borgmatic's archive
        name format / match_archives unless all_names)."""
        return [name for name, _t in self.archive_times(all_names)]

    def archive_times(self, all_names=False):
        """[(name, naive local start time)], oldest first (see archives())."""
        from borg_cyrus.restore.when import archive_time

        match = [] if all_names else self._match_flags()
        proc = self.run(["list", "--json", *self._common(), *match, self.path], what="borg list")
        try:
            data = json.loads(proc.stdout)
        except ValueError:
            raise ArchiveError(f"borg list {self.path} did not answer JSON") from None
        return [(a["name"], archive_time(a)) for a in data.get("archives", [])]

    def _match_flags(self):
        """borgmatic's flags selecting its archives (archive_name_format / match_archives)."""
        _env, flags, *_ = _borgmatic_modules()
        try:
            return list(
                flags.make_match_archives_flags(
                    self.config.get("match_archives"), self.config.get("archive_name_format"), self.version()
                )
            )
        except Exception:  # borgmatic internals changed: list everything
            return []

    def reader(self, archive=None, conv=None):
        """One borg process reading archive (None: the newest one borgmatic
        made) for several extracts (restore/onepass.py); None when the borg
        configured is not the installed borg 1.4 it drives. conv: a helper
        started early (onepass.prestart), used or ended here."""
        from borg_cyrus.restore import onepass

        glob = None
        flags = self._match_flags() if archive is None else []
        if not onepass.usable(self) or (flags and flags[0] != "--glob-archives"):
            if conv is not None:
                conv.close()
            return None
        glob = flags[1] if flags else None
        reader = onepass.Reader(self, archive, glob, conv=conv)
        if not reader.matched:
            log.warning(
                "no archive matches borgmatic's archive name format here; using the newest "
                "archive of %s (pass --archive to choose)",
                self,
            )
        return reader

    def resolve(self, archive=None, at=None):
        """The archive name: as given, the newest made at or before `at`
        (restore/when.py), or the latest one ('latest' or None)."""
        if archive and archive != "latest":
            if at:
                raise ArchiveError("give --archive or --at, not both")
            return archive
        if at:
            from borg_cyrus.restore import when

            name = when.pick(self.archive_times(), when.parse_at(at), at)
            log.info("--at %s: archive %s", at, name)
            return name
        names = self.archives()
        if not names:
            names = self.archives(all_names=True)
            if names:
                log.warning(
                    "no archive matches borgmatic's archive name format here; using the newest "
                    "archive of %s (pass --archive to choose)",
                    self,
                )
        if not names:
            raise ArchiveError(f"repository {self} has no archives")
        return names[-1]

    def list_paths(self, archive, paths=()):
        """Archived paths (absolute) below the given paths (all if none)."""
        proc = self.run(
            [
                "list",
                *self._common(),
                "--format",
                "{path}{NUL}",
                f"{self.path}::{archive}",
                *[p.lstrip("/") for p in paths],
            ],
            ok_codes=(0, 1, 101),
            what="borg list",
        )
        return {"/" + p for p in proc.stdout.decode("utf-8", "surrogateescape").split("\0") if p}

    def extract(self, archive, paths, dest):
        """Extract paths (absolute, as archived) below dest. Returns the set of
        given paths the archive does not hold."""
        from borg_cyrus.model import nest_free

        paths = sorted({os.path.normpath(p) for p in paths})
        if not paths:
            return set()
        os.makedirs(dest, 0o700, exist_ok=True)
        # a path inside another one is extracted with it (and borg would call it "never matched")
        rel = [p.lstrip("/") for p in nest_free(paths)]
        # argv stays well below ARG_MAX: chunks of 2000 paths
        for i in range(0, len(rel), 2000):
            chunk = rel[i : i + 2000]
            proc = self.run(
                ["extract", "--log-json", *self._common(), f"{self.path}::{archive}", *chunk],
                cwd=dest,
                ok_codes=(0, 1, 101),
                what="borg extract",
            )
            if proc.returncode:
                other = [m for m in _log_messages(proc.stderr) if "never matched" not in m]
                if proc.returncode == 1 and other:
                    raise ArchiveError("borg extract reported a warning: " + "; ".join(other))
        return {p for p in paths if not os.path.lexists(dest.rstrip("/") + p)}

    def extract_all(self, archive, dest):
        os.makedirs(dest, 0o700, exist_ok=True)
        self.run(["extract", *self._common(), f"{self.path}::{archive}"], cwd=dest, what="borg extract")


def _clip(text, limit=500):
    """At most limit characters, cut at a word boundary."""
    text = " ".join(text.split())
    if len(text) <= limit:
        return text
    return "…" + text[-limit:].split(" ", 1)[-1]


def _last_line(stderr):
    """What a crashing borg says last (a traceback's exception line), whole."""
    lines = [ln.strip() for ln in stderr.decode("utf-8", "replace").splitlines() if ln.strip()]
    for ln in reversed(lines):
        if not ln.startswith(("File ", "Traceback", "^", "~")):
            return ln
    return lines[-1] if lines else "no output"


def _log_messages(stderr, msgid=None, plain=True):
    """Messages of borg's --log-json lines (and other lines when plain)."""
    out = []
    for line in stderr.decode("utf-8", "replace").splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            obj = json.loads(line)
        except ValueError:
            if msgid is None and plain:
                out.append(line)
            continue
        if not isinstance(obj, dict):
            continue
        if msgid is None or obj.get("msgid") == msgid:
            out.append(obj.get("message") or "")
    return out


def open_repository(config_paths=None, repository=None, runner=None):
    """The repository to read, chosen like borgmatic's --repository."""
    _env, _flags, _collect, _load, validate = _borgmatic_modules()
    candidates = []
    for name, config in load_borgmatic_configs(config_paths):
        for repo in config.get("repositories") or []:
            if repository is None or validate.repositories_match(repository, repo):
                candidates.append(Repository(config, repo, name, runner))
    if not candidates:
        if repository:
            raise ConfigError(f"no repository matching {repository} in borgmatic's configuration")
        raise ConfigError("borgmatic's configuration lists no repository")
    if len(candidates) > 1:
        raise ConfigError(
            "borgmatic's configuration lists several repositories ("
            + ", ".join(str(c) for c in candidates)
            + "); choose one with --repository"
        )
    return candidates[0]
