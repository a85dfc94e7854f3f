"""What every plugin gets (config, discovered layout, tools, the runner, the
run's state file), and the one bootstrap that makes it: plugins -> schema ->
config -> layout -> context. cli, doctor, verify and the demo all use it."""

import grp
import os
import pwd
from dataclasses import dataclass

from borg_cyrus import config as config_mod
from borg_cyrus.errors import BorgCyrusError, ConfigError
from borg_cyrus.execute import Runner


@dataclass
class Context:
    config: dict
    layout: object
    tools: object
    runner: Runner
    plugins: object
    state: object = None  # the run's state file (modes record each change in it before making it)

    @property
    def dry_run(self):
        return self.runner.dry_run

    @property
    def work_dir(self):
        return self.config["work_directory"]

    @property
    def dump_dir(self):
        return os.path.join(self.work_dir, "dump")

    @property
    def patterns_file(self):
        return os.path.join(self.work_dir, "patterns")

    @property
    def dumps_patterns_file(self):
        """The patterns file of database-only backups (`before --dumps-only`)."""
        return os.path.join(self.work_dir, "patterns-dumps")

    @property
    def state_file(self):
        return os.path.join(self.work_dir, "state.json")

    @property
    def lock_file(self):
        return os.path.join(self.work_dir, "lock")

    def cyrus_ids(self):
        """(uid, gid) of the configured cyrus user and group."""
        try:
            return (pwd.getpwnam(self.config["cyrus_user"]).pw_uid, grp.getgrnam(self.config["cyrus_group"]).gr_gid)
        except KeyError as e:
            raise BorgCyrusError(
                f"user/group {e.args[0]} does not exist; install Cyrus first or set cyrus_user/cyrus_group"
            ) from None

    def run(self, argv, **kw):
        return self.runner.run(argv, **kw)

    def cyrus(self, tool, *args, conf=None, **kw):
        """Run a Cyrus tool with -C (the live config unless conf is given).

        Tools started as root switch to the cyrus user themselves.
        """
        kw.setdefault("timeout", self.config["tool_timeout"])
        kw.setdefault("what", tool)
        return self.runner.run([self.tools[tool], "-C", conf or self.layout.imapd_conf, *args], **kw)


def load_config(path=None, plugins=None):
    """(config, plugins): the config at path (or $BORG_CYRUS_CONFIG, or the
    default), validated against the schema with every plugin's keys."""
    from borg_cyrus.plugins import Plugins

    plugins = plugins or Plugins()
    schema = config_mod.full_schema(plugins.config_schema_fragments(), plugins.modes())
    cfg_path, explicit = config_mod.resolve_path(path)
    return config_mod.load(cfg_path, explicit, schema), plugins


def build_context(cfg, plugins, dry_run=False):
    """The Context of a loaded config: discover the layout and the tools."""
    from borg_cyrus.cyrus import layout as layout_mod
    from borg_cyrus.safety import pathpolicy

    lay = layout_mod.discover(cfg["imapd_conf"], cfg["cyrus_conf"] if os.path.exists(cfg["cyrus_conf"]) else None)
    clash = pathpolicy.check_apart(cfg.own_directories, lay.data_locations())
    if clash:
        k, d, ck, cd = clash
        raise ConfigError(
            f"{cfg.path}: {k}: {d} overlaps Cyrus's {ck} {cd} ({lay.imapd_conf}); keep "
            "borg-cyrus's directories apart from Cyrus's data"
        )
    tools = layout_mod.find_tools(cfg["cyrus_tools_directory"])
    runner = Runner(dry_run=dry_run, default_timeout=cfg["tool_timeout"])
    return Context(config=cfg, layout=lay, tools=tools, runner=runner, plugins=plugins)


def bootstrap(path=None, dry_run=False):
    """config file -> Context, in one call."""
    cfg, plugins = load_config(path)
    return build_context(cfg, plugins, dry_run=dry_run)
