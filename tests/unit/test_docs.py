"""The docs match the code: every module of borg_cyrus/ is named in the
architecture page and in README's module map, every hook in both."""

import os
import re

from borg_cyrus import hookspecs
from support.common import ROOT


def _modules():
    pkg = os.path.join(ROOT, "borg_cyrus")
    for dirpath, _dirs, files in os.walk(pkg):
        for f in files:
            if f.endswith(".py") and f != "__init__.py" and "__pycache__" not in dirpath:
                yield os.path.relpath(os.path.join(dirpath, f), pkg)


def _read(*parts):
    with open(os.path.join(ROOT, *parts)) as f:
        return f.read()


def test_every_module_is_on_the_map():
    arch, readme = _read("docs", "architecture.md"), _read("README.md")
    for rel in _modules():
        name = os.path.splitext(os.path.basename(rel))[0]
        assert re.search(rf"\b{name}\b", arch), f"docs/architecture.md does not name {rel}"
        assert re.search(rf"\b{name}\b", readme), f"README.md's module map does not name {rel}"


def test_every_hook_is_documented():
    arch, readme = _read("docs", "architecture.md"), _read("README.md")
    hooks = [
        n
        for n in dir(hookspecs)
        if callable(getattr(hookspecs, n)) and getattr(getattr(hookspecs, n), "borg_cyrus_spec", None) is not None
    ]
    assert len(hooks) == 9
    for h in hooks:
        assert f"`{h}(" in arch and f"`{h}(" in readme, h


def test_test_file_names_are_unique():
    """pytest imports test modules by basename (no packages): two of one name break collection."""
    seen = {}
    for dirpath, _dirs, files in os.walk(os.path.join(ROOT, "tests")):
        for f in files:
            if f.startswith("test_") and f.endswith(".py"):
                assert f not in seen, f"{f}: in {seen.get(f)} and {dirpath}"
                seen[f] = dirpath


def _readme_commands(text):
    """argv of every `borg-cyrus ...` command in README's code blocks (not synopses with [..] or a|b,
    not the two-column command summary)."""
    import shlex

    inside, out = False, []
    for ln in text.replace("\\\n", " ").splitlines():
        if ln.startswith("```"):
            inside = not inside
            continue
        ln = ln.strip()
        if not (inside and ln.startswith("borg-cyrus ")) or "  " in ln.split("#")[0].strip():
            continue
        argv = shlex.split(ln, comments=True)[1:]
        if any(a.startswith("[") or "|" in a for a in argv):
            continue
        out.append((ln, argv))
    return out


def test_readme_commands_parse():
    """What the README tells an admin to type is accepted as typed (a runbook with -n last once was not)."""
    import contextlib
    import io

    from borg_cyrus.cli import build_parser

    cmds = _readme_commands(_read("README.md"))
    assert len(cmds) >= 10, cmds
    for line, argv in cmds:
        err = io.StringIO()
        try:
            with contextlib.redirect_stderr(err):
                build_parser().parse_args(argv)
        except SystemExit:
            raise AssertionError(f"README: {line!r}: {err.getvalue().strip().splitlines()[-1]}") from None
