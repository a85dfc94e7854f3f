"""The plugin manager: built-in and third-party plugins load the same way.

Plugins come from the `borg_cyrus` entry-point group, which pyproject.toml
lists once for the built-ins. BORG_CYRUS_PLUGINS (comma-separated
entry-point names) limits which load; BORG_CYRUS_TRACE_PLUGINS=1 logs every
hook call.
"""

import logging
import os
from importlib.metadata import entry_points

import pluggy

from borg_cyrus import hookspecs
from borg_cyrus.errors import ConfigError

log = logging.getLogger(__name__)

GROUP = "borg_cyrus"


def _entry_points():
    return list(entry_points(group=GROUP))


def make_manager(load_entry_points=True):
    pm = pluggy.PluginManager(GROUP)
    pm.add_hookspecs(hookspecs)
    if os.environ.get("BORG_CYRUS_TRACE_PLUGINS"):
        pm.trace.root.setwriter(lambda msg: log.info("trace: %s", msg.rstrip()))
        pm.enable_tracing()
    if not load_entry_points:
        return pm
    only = os.environ.get("BORG_CYRUS_PLUGINS")
    only = {n.strip() for n in only.split(",")} if only else None
    found = {ep.name: ep for ep in _entry_points()}
    if not found:
        raise ConfigError(
            "no borg-cyrus plugins are installed (entry-point group borg_cyrus is empty); "
            "install borg-cyrus with pip rather than running it from a source tree"
        )
    for name in sorted(found):
        if only is not None and name not in only:
            continue
        try:
            plugin = found[name].load()
        except Exception as e:  # a broken third-party plugin must say so clearly
            raise ConfigError(f"plugin '{name}' failed to load: {e.__class__.__name__}: {e}") from None
        if not pm.is_registered(plugin):
            pm.register(plugin, name=name)
    pm.check_pending()
    return pm


def flatten(results):
    return [x for r in results if r for x in r]


class Plugins:
    """A small typed facade over the hook calls."""

    def __init__(self, pm=None):
        self.pm = pm or make_manager()
        self._modes = None

    def each(self, hook, **kwargs):
        """[(plugin name, result)] calling hook on one plugin at a time (in
        pluggy's order), through traced hook callers, so results stay
        attributed to their plugin."""
        caller = getattr(self.pm.hook, hook)
        names = [impl.plugin_name for impl in reversed(caller.get_hookimpls())]
        out = []
        for name in names:
            others = [p for n, p in self.pm.list_name_plugin() if n != name]
            out.append((name, self.pm.subset_hook_caller(hook, others)(**kwargs)))
        return out

    def modes(self):
        if self._modes is None:
            registry = {}
            for plugin_name, classes in self.each("modes"):
                for cls in flatten(classes):
                    if cls.name in registry:
                        raise ConfigError(
                            f"mode '{cls.name}' is provided twice (plugins {registry[cls.name][0]} and {plugin_name}); "
                            "uninstall one"
                        )
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

    def view_ready(self, ctx, view):
        self.pm.hook.view_ready(ctx=ctx, view=view)

    def mailbox_list(self, ctx, view, dump_dir):
        return self.pm.hook.mailbox_list(ctx=ctx, view=view, dump_dir=dump_dir)

    def dump(self, ctx, view, dump_dir, mailboxes):
        """Every dumper's records, each marked with the plugin that wrote it."""
        records = []
        for name, results in self.each("dump", ctx=ctx, view=view, dump_dir=dump_dir, mailboxes=mailboxes):
            for r in flatten(results):
                r.plugin = r.plugin or name
                records.append(r)
        return records

    def excludes(self, ctx, view, mailboxes):
        return flatten(self.pm.hook.excludes(ctx=ctx, view=view, mailboxes=mailboxes))

    def restore_dump(self, ctx, dump):
        """[(plugin name, report lines)] of every dumper's restore."""
        return [(name, flatten(lines)) for name, lines in self.each("restore_dump", ctx=ctx, dump=dump)]

    def restore_user_dump(self, ctx, dump, userid, user_dir):
        """[(plugin name, report lines)] of every dumper's per-user restore."""
        kw = dict(ctx=ctx, dump=dump, userid=userid, user_dir=user_dir)
        return [(name, flatten(lines)) for name, lines in self.each("restore_user_dump", **kw)]

    def describe(self):
        """[(plugin name, module/dist, [hooks])] for `borg-cyrus plugins`."""
        out = []
        dists = {ep.name: (ep.value, getattr(ep.dist, "name", None)) for ep in _entry_points()}
        for name, plugin in sorted(self.pm.list_name_plugin(), key=lambda x: x[0]):
            hooks = sorted(h.name for h in self.pm.get_hookcallers(plugin) or [])
            value, dist = dists.get(name, (getattr(plugin, "__name__", repr(plugin)), None))
            out.append((name, value, dist, hooks))
        return out
