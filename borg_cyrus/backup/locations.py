"""Built-in plugin: what a Cyrus server needs in its archive."""

import os

from borg_cyrus.hookspecs import hookimpl
from borg_cyrus.model import Location


def _inside(path, root):
    return path == root or path.startswith(root.rstrip("/") + "/")


@hookimpl
def locations(ctx):
    lay = ctx.layout
    out = [Location(lay.configdirectory, "data", "configdirectory")]
    for group, label in (
        (lay.partitions, "partition"),
        (lay.metapartitions, "metapartition"),
        (lay.archivepartitions, "archivepartition"),
    ):
        for name in sorted(group):
            out.append(Location(group[name], "data", f"{label}-{name}"))
    out.append(Location(lay.sievedir, "data", "sievedir", required=False))
    for name, (_backend, path) in sorted(lay.databases.items()):
        if not _inside(path, lay.configdirectory):
            out.append(Location(path, "data", f"{name} database", required=False))
    if "search-indexes" not in ctx.config["exclude"]["regenerable"]:
        for key, path in sorted(lay.searchpartitions.items()):
            out.append(Location(path, "data", key, required=False))
    for path in lay.conf.files:
        out.append(Location(os.path.abspath(path), "config", "imapd.conf" if path == lay.imapd_conf else "@include"))
    if lay.cyrus_conf:
        out.append(Location(lay.cyrus_conf, "config", "cyrus.conf", required=False))
    for path in ctx.config["extra_paths"]:
        out.append(Location(path, "config", "extra_paths"))
    out.append(Location(ctx.dump_dir, "dump", "borg-cyrus dumps"))
    return out
