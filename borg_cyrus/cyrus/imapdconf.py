"""Read imapd.conf the way Cyrus's libconfig does.

Rules (lib/libconfig.c): leading blanks skipped; '#' starts a comment line; a
trailing backslash continues the line; the key is [A-Za-z0-9_-]+ (an optional
leading '@' for directives), lower-cased, followed by ':'; the value is trimmed
and must not be empty; '@include: FILE' reads another file; a key given twice
is an error; a value starting with '{configdirectory}' is expanded.
"""

import os
import re
from dataclasses import dataclass, field

from borg_cyrus.errors import BorgCyrusError, ConfigError

_KEY = re.compile(r"@?[A-Za-z0-9_-]+")


@dataclass
class ImapdConf:
    path: str
    values: dict = field(default_factory=dict)
    files: list = field(default_factory=list)  # the main file first, then @include'd ones

    def get(self, key, default=None):
        return self.values.get(key, default)

    def switch(self, key, default=False):
        """A Cyrus switch: 1/yes/on/true/t vs 0/no/off/false/f."""
        value = self.values.get(key)
        if value is None:
            return default
        v = value.lower()
        if v[:1] in ("1", "y", "t") or v.startswith("on"):
            return True
        if v[:1] in ("0", "n", "f") or v.startswith("of"):
            return False
        raise ConfigError(f"{self.path}: {key}: '{value}' is not a switch; use yes or no")

    def with_prefix(self, prefix):
        """{suffix: value} for every key 'prefix<suffix>'."""
        return {k[len(prefix) :]: v for k, v in self.values.items() if k.startswith(prefix)}

    @property
    def configdirectory(self):
        return self.values["configdirectory"]


def parse_text(text, path="<imapd.conf>", values=None, files=None, _depth=0):
    """Parse imapd.conf text into values (dict, keys lower-cased)."""
    values = {} if values is None else values
    files = [] if files is None else files
    files.append(path)
    pending = ""
    lineno = 0
    for raw in text.splitlines():
        lineno += 1
        if raw.endswith("\\"):
            pending += raw[:-1]
            continue
        line = (pending + raw).lstrip()
        pending = ""
        if not line or line.startswith("#"):
            continue
        m = _KEY.match(line)
        if not m or line[m.end() : m.end() + 1] != ":":
            raise ConfigError(f"{path}, line {lineno}: invalid option name; expected 'key: value'")
        key = m.group(0).lower()
        value = line[m.end() + 1 :].strip()
        if not value:
            raise ConfigError(f"{path}, line {lineno}: empty value for '{key}'; remove the line or give a value")
        if key.startswith("@"):
            if key != "@include":
                raise ConfigError(f"{path}, line {lineno}: unknown directive '{key}'")
            if _depth > 20:
                raise ConfigError(f"{path}, line {lineno}: @include nested too deeply")
            inc = value if os.path.isabs(value) else os.path.join(os.path.dirname(path), value)
            if inc in files:
                raise ConfigError(f"{path}, line {lineno}: {inc} included twice")
            parse_text(_read(inc, f"{path}, line {lineno}: @include"), inc, values, files, _depth + 1)
            continue
        if key in values:
            raise ConfigError(f"{path}, line {lineno}: option '{key}' given twice; keep one")
        values[key] = value
    return values, files


MAX_BYTES = 4 << 20


def _read(path, what):
    from borg_cyrus.safety import safeio

    try:
        data = safeio.read_bytes(path, limit=MAX_BYTES, follow=True, what=f"{what}: {path}")
    except FileNotFoundError:
        raise ConfigError(f"{what}: {path} does not exist; set imapd_conf in the borg-cyrus config") from None
    except safeio.NotRegularFile as e:
        raise ConfigError(f"{what}: {path} is {e.kind}, not a regular file; Cyrus reads only files there") from None
    except OSError as e:
        raise ConfigError(f"{what}: cannot read {path}: {e.strerror}") from None
    except BorgCyrusError as e:
        raise ConfigError(str(e)) from None
    return data.decode("utf-8", "surrogateescape")


def load(path):
    values, files = parse_text(_read(path, "imapd.conf"), path)
    confdir = values.get("configdirectory")
    if not confdir:
        raise ConfigError(f"{path}: configdirectory is not set; Cyrus needs it")
    if not confdir.startswith("/") or confdir == "/":
        raise ConfigError(f"{path}: configdirectory must be an absolute path other than /")
    for key, value in list(values.items()):
        if key != "configdirectory" and value.lower().startswith("{configdirectory}"):
            values[key] = confdir + value[len("{configdirectory}") :]
    return ImapdConf(path, values, files)
