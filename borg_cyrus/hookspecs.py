"""The plugin contract. Built-in plugins (borg_cyrus/builtin/) use it exactly
as third-party ones do; both are found through the `borg_cyrus` entry-point
group. Implement any subset with `@borg_cyrus.hookimpl`.

Call order in `borg-cyrus before`: config_schema (at load) -> locations ->
modes (the configured one freezes a view) -> view_ready -> dump -> excludes.
"""

import pluggy

hookspec = pluggy.HookspecMarker("borg_cyrus")
hookimpl = pluggy.HookimplMarker("borg_cyrus")


@hookspec
def config_schema():
    """Return {top-level key: JSON schema} for config keys this plugin owns."""


@hookspec
def modes():
    """Return a list of Mode subclasses (borg_cyrus.modes.Mode) this plugin provides.

    A mode produces the frozen view the backup reads (live, stop-master, a
    snapshot provider). Mode names are unique; the config's `mode` picks one.
    """


@hookspec
def locations(ctx):
    """Return a list of Location: what must be in the archive."""


@hookspec
def view_ready(ctx, view):
    """Called once the frozen view exists (snapshots taken and mounted, Cyrus
    running again), before any dump. For notifications and checks."""


@hookspec
def dump(ctx, view, dump_dir):
    """Write dumps into dump_dir (a fresh directory, mode 0700) and return a
    list of DumpRecord. Read Cyrus's data through `view` (use view.imapd_conf
    with the Cyrus tools) so dumps describe the same instant as the spool.
    The built-in dumper runs first: ctx.mailboxes holds the mailbox list.
    Raise BorgCyrusError to fail the backup."""


@hookspec
def excludes(ctx, view):
    """Return a list of Exclude (original paths; they are mapped through the
    view when the patterns file is written). ctx.mailboxes holds the dumped
    mailbox list."""
