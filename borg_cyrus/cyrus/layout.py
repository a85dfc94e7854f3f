"""Discovery: where a Cyrus server keeps its data, and where its tools are.

Everything is derived from imapd.conf (see imapdconf.py) plus Cyrus's own
defaults for 3.x, so the result matches what the server itself uses.
"""

import os
import shutil
from dataclasses import dataclass, field

from borg_cyrus.cyrus import imapdconf
from borg_cyrus.safety import pathpolicy
from borg_cyrus.errors import ConfigError

# Databases in configdirectory: name -> (backend key, path key, default file)
DATABASES = {
    "mailboxes": ("mboxlist_db", "mboxlist_db_path", "mailboxes.db"),
    "annotations": ("annotation_db", "annotation_db_path", "annotations.db"),
    "duplicate": ("duplicate_db", "duplicate_db_path", "deliver.db"),
    "tls_sessions": ("tls_sessions_db", "tls_sessions_db_path", "tls_sessions.db"),
    "ptscache": ("ptscache_db", "ptscache_db_path", "ptscache.db"),
    "statuscache": ("statuscache_db", "statuscache_db_path", "statuscache.db"),
    "zoneinfo": ("zoneinfo_db", "zoneinfo_db_path", "zoneinfo.db"),
    "userdeny": ("userdeny_db", "userdeny_db_path", "user_deny.db"),
    "backups": ("backup_db", "backup_db_path", "backups.db"),
    "sync_cache": ("sync_cache_db", "sync_cache_db_path", "sync/cache.db"),
    "newsrc": ("newsrc_db", "newsrc_db_path", "fetchnews.db"),
}
DB_DEFAULT_BACKEND = {
    "mailboxes": "twoskip",
    "annotations": "twoskip",
    "duplicate": "twoskip",
    "tls_sessions": "twoskip",
    "ptscache": "twoskip",
    "statuscache": "twoskip",
    "zoneinfo": "twoskip",
    "userdeny": "flat",
    "backups": "twoskip",
    "sync_cache": "twoskip",
    "newsrc": "skiplist",
}
# Per-user databases (imap/user.c, mboxname.c): name -> (backend key or None, default backend, suffix).
# <configdirectory>/user/uuid/<u0>/<u1>/<INBOX uniqueid>/<suffix>.db, legacy .../user/<h>/<user>.<suffix>;
# dav is SQLite, counters Cyrus's own fixed-size binary file.
USER_DATABASES = {
    "seen": ("seenstate_db", "twoskip", "seen"),
    "sub": ("subscription_db", "flat", "sub"),
    "mboxkey": ("mboxkey_db", "twoskip", "mboxkey"),
    "dav": (None, "sqlite", "dav"),
    "conversations": ("conversations_db", "skiplist", "conversations"),
    "counters": (None, "counters", "counters"),
}

# Where distributions put the Cyrus tools (first match wins).
TOOL_DIRS = (
    "/usr/lib/cyrus/bin",  # Debian, Ubuntu
    "/usr/libexec/cyrus-imapd",  # Fedora, RHEL 8+
    "/usr/lib/cyrus-imapd",  # RHEL 7, SUSE, Arch
    "/usr/local/libexec/cyrus-imapd",
    "/usr/cyrus/bin",  # source installs (old default prefix)
    "/usr/local/cyrus/bin",
    "/usr/local/sbin",
    "/usr/sbin",
)
REQUIRED_TOOLS = ("ctl_mboxlist", "cyr_dbtool")
RESTORE_TOOLS = ("reconstruct", "quota", "ctl_cyrusdb", "cvt_cyrusdb")
OPTIONAL_TOOLS = ("cyr_info", "mbpath", "master", "cyr_expire", "squatter", "ctl_conversationsdb")


@dataclass
class Tools:
    directory: str | None
    paths: dict = field(default_factory=dict)  # tool name -> absolute path

    def __getitem__(self, name):
        try:
            return self.paths[name]
        except KeyError:
            where = self.directory or "any of " + ", ".join(TOOL_DIRS)
            raise ConfigError(
                f"Cyrus tool '{name}' not found in {where}; install Cyrus or set cyrus_tools_directory"
            ) from None

    def has(self, name):
        return name in self.paths

    def missing(self, names):
        return [n for n in names if n not in self.paths]


def find_tools(override=None):
    names = REQUIRED_TOOLS + RESTORE_TOOLS + OPTIONAL_TOOLS
    dirs = [override] if override else list(TOOL_DIRS)
    for d in dirs:
        found = {n: os.path.join(d, n) for n in names if os.access(os.path.join(d, n), os.X_OK)}
        # Fedora names the master binary cyrus-master; Debian also has cyrmaster.
        if "master" not in found:
            for alt in ("cyrus-master", "cyrmaster"):
                p = os.path.join(d, alt)
                if os.access(p, os.X_OK):
                    found["master"] = p
                    break
        if all(n in found for n in REQUIRED_TOOLS):
            return Tools(d, found)
    if override:
        return Tools(override, {})
    # Last resort: PATH (e.g. a prefix we do not know).
    found = {n: shutil.which(n) for n in names if shutil.which(n)}
    if all(n in found for n in REQUIRED_TOOLS):
        return Tools(os.path.dirname(found["ctl_mboxlist"]), found)
    return Tools(None, {})


@dataclass
class Layout:
    """The discovered, absolute locations of one Cyrus server."""

    conf: imapdconf.ImapdConf
    configdirectory: str
    partitions: dict  # name -> path
    metapartitions: dict
    archivepartitions: dict
    searchpartitions: dict  # "<tier>searchpartition-<part>" -> path
    sievedir: str
    databases: dict  # name -> (backend, path)
    runtime_paths: dict  # proc_path, mboxname_lockpath, sockets
    defaultpartition: str
    hashimapspool: bool
    fulldirhash: bool
    virtdomains: bool
    unixhierarchysep: bool
    legacy_dirs: bool
    cyrus_conf: str | None = None

    @property
    def imapd_conf(self):
        return self.conf.path

    def database(self, name):
        return self.databases[name]

    def partition_path(self, name):
        try:
            return self.partitions[name]
        except KeyError:
            raise ConfigError(
                f"{self.imapd_conf}: mailbox uses partition '{name}' but partition-{name} is not set"
            ) from None

    def search_engine(self):
        """The search engine squatter indexes for (squat or xapian), or None."""
        engine = str(self.conf.get("search_engine", "none")).lower()
        return engine if engine in ("squat", "xapian") else None

    def all_partition_dirs(self):
        """Every directory that holds mailbox data, in a stable order."""
        out = []
        for group in (self.partitions, self.metapartitions, self.archivepartitions):
            out.extend(group[k] for k in sorted(group))
        return out

    def data_locations(self):
        """(imapd.conf key, directory) of every place Cyrus keeps data."""
        out = [("configdirectory", self.configdirectory), ("sievedir", self.sievedir)]
        for prefix, group in (
            ("partition-", self.partitions),
            ("metapartition-", self.metapartitions),
            ("archivepartition-", self.archivepartitions),
        ):
            out += [(prefix + k, group[k]) for k in sorted(group)]
        out += sorted(self.searchpartitions.items())
        return out

    def to_json(self):
        return {
            "imapd_conf": self.imapd_conf,
            "cyrus_conf": self.cyrus_conf,
            "configdirectory": self.configdirectory,
            "partitions": self.partitions,
            "metapartitions": self.metapartitions,
            "archivepartitions": self.archivepartitions,
            "searchpartitions": self.searchpartitions,
            "sievedir": self.sievedir,
            "databases": {k: {"backend": b, "path": p} for k, (b, p) in self.databases.items()},
            "runtime_paths": self.runtime_paths,
            "defaultpartition": self.defaultpartition,
            "hashimapspool": self.hashimapspool,
            "fulldirhash": self.fulldirhash,
            "virtdomains": self.virtdomains,
            "unixhierarchysep": self.unixhierarchysep,
            "mailbox_legacy_dirs": self.legacy_dirs,
        }


def _abs(conf, key, value, directory=True):
    """A location from imapd.conf, refused when it is or sits in a system
    directory (restores chown Cyrus's locations to the cyrus user)."""
    if not value.startswith("/"):
        raise ConfigError(f"{conf.path}: {key}: '{value}' is not an absolute path; Cyrus needs absolute paths")
    why = pathpolicy.system_reason(value) if directory else pathpolicy.file_reason(value)
    if why:
        raise ConfigError(
            f"{conf.path}: {key}: '{value}' {why}; give Cyrus's "
            f"{'data a directory' if directory else 'database a path'} of its own "
            "(e.g. below /var/lib/cyrus or /var/spool/cyrus)"
        )
    return os.path.normpath(value)


def discover(imapd_conf_path, cyrus_conf_path=None):
    conf = imapdconf.load(imapd_conf_path)
    confdir = _abs(conf, "configdirectory", conf.configdirectory)

    def paths(prefix):
        return {name.lower(): _abs(conf, prefix + name, v) for name, v in conf.with_prefix(prefix).items() if name}

    partitions = paths("partition-")
    defaultpartition = conf.get("defaultpartition", "default").lower()
    if not partitions:
        raise ConfigError(f"{conf.path}: no partition-NAME is set; Cyrus needs at least partition-{defaultpartition}")
    searchparts = {
        k: _abs(conf, k, v)
        for k, v in conf.values.items()
        if "searchpartition-" in k and not k.startswith("partition-")
    }

    databases = {}
    for name, (backend_key, path_key, default) in DATABASES.items():
        backend = conf.get(backend_key, DB_DEFAULT_BACKEND[name])
        path = conf.get(path_key)
        databases[name] = (backend, _abs(conf, path_key, path, False) if path else os.path.join(confdir, default))
    quota_backend = conf.get("quota_db", "quotalegacy")
    quota_path = conf.get("quota_db_path")
    databases["quota"] = (
        quota_backend,
        _abs(conf, "quota_db_path", quota_path, quota_backend == "quotalegacy")
        if quota_path
        else os.path.join(confdir, "quota" if quota_backend == "quotalegacy" else "quotas.db"),
    )

    runtime = {
        "proc_path": _abs(conf, "proc_path", conf.get("proc_path") or os.path.join(confdir, "proc")),
        "mboxname_lockpath": _abs(
            conf, "mboxname_lockpath", conf.get("mboxname_lockpath") or os.path.join(confdir, "lock")
        ),
        "socket_dir": os.path.join(confdir, "socket"),
    }
    for key in ("lmtpsocket", "idlesocket", "notifysocket"):
        runtime[key] = conf.get(key) or os.path.join(confdir, "socket", key[:-6])

    return Layout(
        conf=conf,
        configdirectory=confdir,
        partitions=partitions,
        metapartitions=paths("metapartition-"),
        archivepartitions=paths("archivepartition-"),
        searchpartitions=searchparts,
        sievedir=_abs(conf, "sievedir", conf.get("sievedir", "/usr/sieve")),
        databases=databases,
        runtime_paths={k: os.path.normpath(v) for k, v in runtime.items()},
        defaultpartition=defaultpartition,
        hashimapspool=conf.switch("hashimapspool", False),
        fulldirhash=conf.switch("fulldirhash", False),
        virtdomains=(conf.get("virtdomains", "off").lower() not in ("off", "0", "no", "false", "f")),
        unixhierarchysep=conf.switch("unixhierarchysep", True),
        legacy_dirs=conf.switch("mailbox_legacy_dirs", False),
        cyrus_conf=cyrus_conf_path,
    )
