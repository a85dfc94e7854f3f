"""Load and validate /etc/borg-cyrus.yaml against the JSON schema.

Every error is one line naming the file, the key, what is wrong and how to
fix it. Defaults from the schema are filled in, so an empty file is valid.
"""

import copy
import os
import stat
from importlib import resources

import jsonschema
import yaml

from borg_cyrus.errors import BorgCyrusError, ConfigError

DEFAULT_PATH = "/etc/borg-cyrus.yaml"
# absolute, no '..' component, no line break (paths end up in the patterns file)
SAFE_PATH = r"^/(?!.*(?:^|/)\.\.(?:/|$))[^\n\r]*$"
ENV_VAR = "BORG_CYRUS_CONFIG"


def _safe_paths(node):
    """Every `pattern: "^/"` in the schema means a safe absolute path."""
    if isinstance(node, dict):
        if node.get("pattern") == "^/":
            node["pattern"] = SAFE_PATH
        for v in node.values():
            _safe_paths(v)
    elif isinstance(node, list):
        for v in node:
            _safe_paths(v)
    return node


def base_schema():
    text = resources.files("borg_cyrus").joinpath("schema.yaml").read_text()
    return _safe_paths(yaml.safe_load(text))


def full_schema(plugin_fragments=(), modes=()):
    """The base schema plus plugin-owned keys, with mode limited to known modes."""
    schema = base_schema()
    props = schema["properties"]
    for fragment in plugin_fragments:
        for key, sub in (fragment or {}).items():
            if key in props:
                raise ValueError(f"plugin config key '{key}' is already defined")
            props[key] = _safe_paths(copy.deepcopy(sub))
    if modes:
        props["mode"]["enum"] = sorted(modes)
    return schema


# `format: own-directory`: a directory borg-cyrus creates, chmods or mounts on
FORMATS = jsonschema.FormatChecker(formats=())


@FORMATS.checks("own-directory", raises=ValueError)
def _own_directory(value):
    from borg_cyrus.safety import pathpolicy

    why = pathpolicy.system_reason(value) if isinstance(value, str) else None
    if why:
        raise ValueError(why)
    return True


@FORMATS.checks("byte-size", raises=ValueError)
def _byte_size(value):
    from borg_cyrus.backup import rules

    rules.parse_size(value)
    return True


@FORMATS.checks("age", raises=ValueError)
def _age(value):
    from borg_cyrus.backup import rules

    rules.parse_age(value)
    return True


FORMAT_EXAMPLES = {"byte-size": "500k, 1MB, 2G or a byte count", "age": "12h, 7d, 2w or 1y"}


class Config(dict):
    """The validated configuration (defaults filled in); .path is its file,
    .own_directories the (key, path) of every `own-directory` value."""

    path = None
    own_directories = ()


def _own_directories(schema, data, key=""):
    out = []
    if not isinstance(data, dict):
        return out
    for name, sub in (schema.get("properties") or {}).items():
        value = data.get(name)
        k = f"{key}.{name}" if key else name
        if sub.get("format") == "own-directory" and isinstance(value, str):
            out.append((k, value))
        elif isinstance(value, dict):
            out.extend(_own_directories(sub, value, k))
    return out


def _fill_defaults(schema, data):
    """Recursively add schema defaults for missing keys of objects."""
    if schema.get("type") != "object" or not isinstance(data, dict):
        return data
    for key, sub in schema.get("properties", {}).items():
        if key not in data and "default" in sub:
            data[key] = copy.deepcopy(sub["default"])
        if key in data:
            data[key] = _fill_defaults(sub, data[key])
    return data


def _key_path(path):
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def _type_name(value):
    return {
        dict: "a mapping",
        list: "a list",
        str: "a string",
        bool: "true/false",
        int: "a number",
        float: "a number",
        type(None): "empty (null)",
    }.get(type(value), type(value).__name__)


def explain(error, source):
    """One line for a jsonschema ValidationError."""
    key = _key_path(error.absolute_path)
    v = error.validator
    if v == "additionalProperties":
        allowed = sorted(error.schema.get("properties", {}))
        extra = sorted(set(error.instance) - set(allowed))
        where = f"{key}." if error.absolute_path else ""
        return (
            f"{source}: {where}{extra[0] if extra else '?'}: unknown key; remove it or use one of: {', '.join(allowed)}"
        )
    if v == "enum":
        choices = ", ".join(str(c) for c in error.validator_value)
        return f"{source}: {key}: '{error.instance}' is not a valid choice; use one of: {choices}"
    if v == "type":
        want = error.validator_value
        want = " or ".join(want) if isinstance(want, list) else want
        return f"{source}: {key}: must be {want}, not {_type_name(error.instance)}; fix the value"
    if v == "pattern" and error.validator_value in ("^/", SAFE_PATH):
        return (
            f"{source}: {key}: {error.instance!r} is not a plain absolute path (it must start with /, "
            "and contain no '..' component and no line break); fix the value"
        )
    if v == "format" and error.validator_value == "own-directory":
        why = error.cause or "is not usable"
        return (
            f"{source}: {key}: {error.instance!r} {why}; borg-cyrus creates, chmods and mounts below this "
            "directory: give it one of its own, e.g. /var/lib/borg-cyrus"
        )
    if v == "format" and error.validator_value in FORMAT_EXAMPLES:
        return (
            f"{source}: {key}: {error.instance!r} {error.cause}; write it like {FORMAT_EXAMPLES[error.validator_value]}"
        )
    if v in ("required", "minProperties") and error.schema.get("x-hint"):
        return f"{source}: {key}: {error.schema['x-hint'].strip()}"
    if v in ("minimum", "minLength", "uniqueItems"):
        return f"{source}: {key}: {error.message}; fix the value"
    return f"{source}: {key}: {error.message}"


MAX_CONFIG_BYTES = 1 << 20
MAX_CONFIG_NODES = 100_000


class _Loader(yaml.SafeLoader):
    """yaml.SafeLoader; aliases are counted (a small file can expand to
    billions of nodes: `config show` and validation would walk them all)."""


def _count_nodes(data, limit):
    """Nodes of the loaded value, counting shared (aliased) ones each time;
    stops at limit."""
    n = 0
    todo = [data]
    while todo:
        n += 1
        if n > limit:
            return n
        x = todo.pop()
        if isinstance(x, dict):
            todo.extend(x.keys())
            todo.extend(x.values())
        elif isinstance(x, list):
            todo.extend(x)
    return n


def read_yaml(path):
    from borg_cyrus.safety import safeio

    try:
        raw = safeio.read_bytes(path, limit=MAX_CONFIG_BYTES, follow=True, what=f"{path}: config file")
    except FileNotFoundError:
        raise ConfigError(
            f"{path}: config file not found; create it (an empty file is fine) or pass --config"
        ) from None
    except safeio.NotRegularFile as e:
        raise ConfigError(f"{path}: config file is {e.kind}, not a regular file; point --config at a file") from None
    except BorgCyrusError as e:
        raise ConfigError(f"{e}; a borg-cyrus config is a few KB") from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot read config file: {e.strerror}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise ConfigError(
            f"{path}, line {line}: not UTF-8 text (byte 0x{raw[e.start]:02x}); save the file as UTF-8"
        ) from None
    try:
        data = yaml.load(text, Loader=_Loader)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f", line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(f"{path}{where}: YAML syntax error: {problem}; fix the syntax there") from None
    except RecursionError:
        raise ConfigError(f"{path}: nested too deeply; a borg-cyrus config is a few levels deep") from None
    if _count_nodes(data, MAX_CONFIG_NODES) > MAX_CONFIG_NODES:
        raise ConfigError(
            f"{path}: expands to more than {MAX_CONFIG_NODES} values (YAML aliases?); "
            "write the config out without anchors and aliases"
        )
    return {} if data is None else data


def check_permissions(path):
    st = os.stat(path)
    if st.st_mode & stat.S_IWOTH:
        raise ConfigError(f"{path}: config file is writable by every user; run chmod o-w {path}")
    if st.st_mode & stat.S_IWGRP and st.st_gid != 0:
        raise ConfigError(f"{path}: config file is writable by group {st.st_gid}; run chmod g-w {path}")
    if os.geteuid() == 0 and st.st_uid != 0:
        raise ConfigError(f"{path}: config file is owned by uid {st.st_uid}, not root; run chown root {path}")


def resolve_path(cli_path=None):
    """(path, explicit): --config, then $BORG_CYRUS_CONFIG, then the default."""
    if cli_path:
        return cli_path, True
    env = os.environ.get(ENV_VAR)
    if env:
        return env, True
    return DEFAULT_PATH, False


def load(path, explicit=True, schema=None):
    """Read, validate and default the config at path.

    A missing default file counts as empty; a missing explicit one is an error.
    """
    schema = schema or base_schema()
    if not explicit and not os.path.exists(path):
        data = {}
    else:
        data = read_yaml(path)
        check_permissions(path)
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the config must be a mapping of keys to values, not {_type_name(data)}")
    validator = jsonschema.Draft7Validator(schema, format_checker=FORMATS)
    errors = sorted(validator.iter_errors(data), key=lambda e: (len(e.absolute_path), list(map(str, e.absolute_path))))
    if errors:
        raise ConfigError(explain(jsonschema.exceptions.best_match(errors), path))
    cfg = Config(_fill_defaults(schema, copy.deepcopy(data)))
    cfg.path = path
    cfg.own_directories = _own_directories(schema, cfg)
    return cfg
