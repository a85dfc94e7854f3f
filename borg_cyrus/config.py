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

from borg_cyrus.errors import ConfigError

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


class Config(dict):
    """The validated configuration (defaults filled in); .path is its file."""

    path = None


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
    return {dict: "a mapping", list: "a list", str: "a string", bool: "true/false", int: "a number",
            float: "a number", type(None): "empty (null)"}.get(type(value), type(value).__name__)


def explain(error, source):
    """One line for a jsonschema ValidationError."""
    key = _key_path(error.absolute_path)
    v = error.validator
    if v == "additionalProperties":
        allowed = sorted(error.schema.get("properties", {}))
        extra = sorted(set(error.instance) - set(allowed))
        where = f"{key}." if error.absolute_path else ""
        return (f"{source}: {where}{extra[0] if extra else '?'}: unknown key; "
                f"remove it or use one of: {', '.join(allowed)}")
    if v == "enum":
        choices = ", ".join(str(c) for c in error.validator_value)
        return f"{source}: {key}: '{error.instance}' is not a valid choice; use one of: {choices}"
    if v == "type":
        want = error.validator_value
        want = " or ".join(want) if isinstance(want, list) else want
        return f"{source}: {key}: must be {want}, not {_type_name(error.instance)}; fix the value"
    if v == "pattern" and error.validator_value in ("^/", SAFE_PATH):
        return (f"{source}: {key}: {error.instance!r} is not a plain absolute path (it must start with /, "
                "and contain no '..' component and no line break); fix the value")
    if v in ("minimum", "minLength", "uniqueItems"):
        return f"{source}: {key}: {error.message}; fix the value"
    return f"{source}: {key}: {error.message}"


def read_yaml(path):
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found; create it (an empty file is fine) or pass --config") from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot read config file: {e.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f", line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(f"{path}{where}: YAML syntax error: {problem}; fix the syntax there") from None
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
    validator = jsonschema.Draft7Validator(schema)
    errors = sorted(validator.iter_errors(data), key=lambda e: (len(e.absolute_path), list(map(str, e.absolute_path))))
    if errors:
        raise ConfigError(explain(jsonschema.exceptions.best_match(errors), path))
    cfg = Config(_fill_defaults(schema, copy.deepcopy(data)))
    cfg.path = path
    return cfg
