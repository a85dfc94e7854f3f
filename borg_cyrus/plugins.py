"""The plugin manager: loads built-in and third-party plugins the same way.

Plugins come from the `borg_cyrus` entry-point group. BORG_CYRUS_PLUGINS
(comma-separated entry-point names) limits which load; BORG_CYRUS_TRACE_PLUGINS=1
logs every hook call.
"""

import importlib
import logging
import os
from importlib.metadata import entry_points

import pluggy

from borg_cyrus import hookspecs
from borg_cyrus.errors import ConfigError

log = logging.getLogger(__name__)

GROUP = "borg_cyrus"
# Used only when the package runs without installed metadata (e.g. from a
# source tree on PYTHONPATH); an installed package lists them as entry points.
BUILTIN = {
    "core": "borg_cyrus.backup.locations",
    "dumps": "borg_cyrus.backup.dumps",
    "excludes": "borg_cyrus.backup.excludes",
    "live": "borg_cyrus.providers.live",
    "stop_master": "borg_cyrus.providers.stop_master",
    "snapshot": "borg_cyrus.providers.snapshot_settings",
    "btrfs": "borg_cyrus.providers.btrfs",
    "lvm": "borg_cyrus.providers.lvm",
    "zfs": "borg_cyrus.providers.zfs",
    "command": "borg_cyrus.providers.command",
    "rsync_staging": "borg_cyrus.providers.rsync_staging",
}


def _entry_points():
    return list(entry_points(group=GROUP))


def make_manager(load_entry_points=True):
    pm = pluggy.PluginManager(GROUP)
    pm.add_hookspecs(hookspecs)
    if not load_entry_points:
        return pm
    only = os.environ.get("BORG_CYRUS_PLUGINS")
    only = {n.strip() for n in only.split(",")} if only else None
    found = {ep.name: ep for ep in _entry_points()}
    names = set(found)
    for name, module in BUILTIN.items():
        if name not in found:
            names.add(name)
    for name in sorted(names):
        if only is not None and name not in only:
            continue
        try:
            plugin = found[name].load() if name in found else importlib.import_module(BUILTIN[name])
        except Exception as e:  # a broken third-party plugin must say so clearly
            raise ConfigError(f"plugin '{name}' failed to load: {e.__class__.__name__}: {e}") from None
        if pm.is_registered(plugin):
            continue
        pm.register(plugin, name=name)
    pm.check_pending()
    if os.environ.get("BORG_CYRUS_TRACE_PLUGINS"):
        pm.trace.root.setwriter(lambda msg: log.info("trace: %s", msg.rstrip()))
        pm.enable_tracing()
    return pm


def flatten(results):
    out = []
    for r in results:
        if r:
            out.extend(r)
    return out


class Plugins:
    """A small typed facade over the hook calls."""

    def __init__(self, pm=None):
        self.pm = pm or make_manager()
        self._modes = None

    def modes(self):
        if self._modes is None:
            registry = {}
            for plugin_name, classes in self._call_named("modes"):
                for cls in classes or ():
                    if cls.name in registry:
                        raise ConfigError(
                            f"mode '{cls.name}' is provided twice (plugins {registry[cls.name][0]} and {plugin_name}); "
                            "uninstall one")
                    registry[cls.name] = (plugin_name, cls)
            self._modes = registry
        return {name: cls for name, (_, cls) in self._modes.items()}

    def mode_plugin(self, mode_name):
        self.modes()
        return self._modes[mode_name][0]

    def config_schema_fragments(self):
        return [r for r in self.pm.hook.config_schema() if r]

    def locations(self, ctx):
        return flatten(self.pm.hook.locations(ctx=ctx))

    def dump_each(self, ctx, view, dump_dir):
        """Run every dumper; yields (plugin name, records)."""
        for name, impl in self._impls("dump"):
            yield name, impl.function(ctx=ctx, view=view, dump_dir=dump_dir) or []

    def excludes(self, ctx, view):
        return flatten(self.pm.hook.excludes(ctx=ctx, view=view))

    def _impls(self, hook):
        """(plugin name, impl) in the order pluggy would call them (tryfirst first)."""
        impls = getattr(self.pm.hook, hook).get_hookimpls()
        return [(i.plugin_name, i) for i in reversed(impls)]

    def _call_named(self, hook):
        return [(name, impl.function()) for name, impl in self._impls(hook)]

    def describe(self):
        """[(plugin name, module/dist, [hooks])] for `borg-cyrus plugins`."""
        out = []
        dists = {ep.name: (ep.value, getattr(ep.dist, "name", None)) for ep in _entry_points()}
        for name, plugin in sorted(self.pm.list_name_plugin(), key=lambda x: x[0]):
            hooks = sorted(h.name for h in self.pm.get_hookcallers(plugin) or [])
            value, dist = dists.get(name, (getattr(plugin, "__name__", repr(plugin)), None))
            out.append((name, value, dist, hooks))
        return out
