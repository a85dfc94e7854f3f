"""Built-in plugin: the `snapshot:` config section shared by the snapshot modes."""

from borg_cyrus.hookspecs import hookimpl
from borg_cyrus.providers.snapshot import SCHEMA


@hookimpl
def config_schema():
    return SCHEMA
