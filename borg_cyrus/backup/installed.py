"""Built-in plugin (opt-in): the installed Cyrus, kept with the backup.

`installed.record`: the Cyrus packages with their versions (dpkg, or rpm),
the list of their files and `cyr_info conf-all` (every option with its
effective value) go into <dump>/installed/ and the manifest's `installed`.
`installed.files`: the installed files themselves (binaries, libraries,
/usr/lib/cyrus; no documentation) are archived too, at their own paths, so a
binary-compatible host can get exactly this Cyrus back (README: "The
installed Cyrus").
"""

import logging
import os

from borg_cyrus.hookspecs import hookimpl
from borg_cyrus.model import DumpRecord, Location

log = logging.getLogger(__name__)
PLUGIN = "installed"
DOCS = ("/usr/share/doc/", "/usr/share/man/", "/usr/share/info/", "/usr/share/lintian/")

SCHEMA = {
    "installed": {
        "type": "object",
        "additionalProperties": False,
        "default": {},
        "description": "The installed Cyrus, kept with every backup (off by default).",
        "properties": {
            "record": {
                "type": "boolean",
                "default": False,
                "description": "Package names and versions, their file list and `cyr_info conf-all` in the dump.",
            },
            "files": {
                "type": "boolean",
                "default": False,
                "description": "Also archive the installed files (binaries, libraries, /usr/lib/cyrus; no docs).",
            },
        },
    }
}


def _manager(ctx):
    for tool, argv in (("dpkg", ["dpkg-query", "--version"]), ("rpm", ["rpm", "--version"])):
        r = ctx.run(argv, changes=False, check=False, timeout=60)
        if r.returncode == 0:
            return tool
    return None


_CACHE = {}


def _inventory(ctx):
    """(manager, [(package, version)], [installed file]) of the Cyrus packages."""
    manager = _manager(ctx)
    tool = ctx.tools.paths.get("ctl_mboxlist") or ctx.tools.paths.get("master")
    if manager is None or not tool:
        return manager, [], []
    tool = os.path.realpath(tool)
    if manager == "dpkg":
        owners = ctx.run(["dpkg", "-S", tool], changes=False, check=False, timeout=60).text
        names = {ln.split(":", 1)[0].strip() for ln in owners.splitlines() if ":" in ln}
        r = ctx.run(
            ["dpkg-query", "-W", "-f", "${Package}\\t${Version}\\t${db:Status-Abbrev}\\n"],
            changes=False,
            check=False,
            timeout=60,
        )
        pkgs = []
        for ln in r.text.splitlines():
            parts = ln.split("\t")
            if (
                len(parts) == 3
                and parts[2].startswith("ii")
                and (parts[0] in names or parts[0].startswith(("cyrus-", "libcyrus")))
            ):
                pkgs.append((parts[0], parts[1]))
        files = []
        for name, _version in pkgs:
            listed = ctx.run(["dpkg", "-L", name], changes=False, check=False, timeout=60).text
            files += [p for p in listed.splitlines() if p.startswith("/")]
    else:
        r = ctx.run(
            ["rpm", "-qf", "--qf", "%{NAME}\\t%{VERSION}-%{RELEASE}\\n", tool], changes=False, check=False, timeout=60
        )
        pkgs = [tuple(ln.split("\t", 1)) for ln in r.text.splitlines() if "\t" in ln]
        files = []
        for name, _version in pkgs:
            files += [
                p
                for p in ctx.run(["rpm", "-ql", name], changes=False, check=False, timeout=60).text.splitlines()
                if p.startswith("/")
            ]
    files = sorted({f for f in files if not f.startswith(DOCS) and os.path.isfile(f) and not os.path.islink(f)})
    return manager, sorted(pkgs), files


def inventory(ctx):
    """Once per run: locations and dump both ask."""
    key = (id(ctx), ctx.tools.directory)
    if key not in _CACHE:
        _CACHE[key] = _inventory(ctx)
    return _CACHE[key]


@hookimpl
def config_schema():
    return SCHEMA


@hookimpl
def locations(ctx):
    if not ctx.config["installed"]["files"]:
        return []
    _manager, _pkgs, files = inventory(ctx)
    return [Location(f, "config", "installed Cyrus file", required=False) for f in files]


@hookimpl
def dump(ctx, view, dump_dir):
    opts = ctx.config["installed"]
    if not (opts["record"] or opts["files"]):
        return []
    manager, pkgs, files = inventory(ctx)
    out = os.path.join(dump_dir, "installed")
    os.mkdir(out, 0o700)
    with open(os.path.join(out, "packages.txt"), "w") as f:
        f.write("".join(f"{name}\t{version}\n" for name, version in pkgs))
    with open(os.path.join(out, "files.txt"), "w") as f:
        f.write("".join(p + "\n" for p in files))
    conf = ""
    if ctx.tools.has("cyr_info"):
        r = ctx.cyrus("cyr_info", "conf-all", conf=view.imapd_conf, changes=False, check=False)
        conf = r.text if r.returncode == 0 else ""
    with open(os.path.join(out, "cyr_info-conf-all.txt"), "w") as f:
        f.write(conf)
    if not pkgs:
        log.warning(
            "installed: no Cyrus package found through %s; only cyr_info conf-all is kept", manager or "dpkg or rpm"
        )
    names = ["installed/packages.txt", "installed/files.txt", "installed/cyr_info-conf-all.txt"]
    size = sum(os.path.getsize(os.path.join(dump_dir, n)) for n in names)
    section = {
        "manager": manager,
        "packages": [{"name": n, "version": v} for n, v in pkgs],
        "files": len(files),
        "files_archived": bool(opts["files"]),
        "options": conf.count("\n"),
    }
    return [DumpRecord("installed", names, len(pkgs), size, 0.0, PLUGIN, manifest={"installed": section})]
