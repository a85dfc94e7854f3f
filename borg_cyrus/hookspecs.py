"""The plugin contract. Built-in plugins use it exactly as third-party ones do;
both are found through the `borg_cyrus` entry-point group (pyproject.toml).
Implement any subset with `@borg_cyrus.hookimpl`; an implementation may take
fewer arguments than the spec names. Hooks return values: a plugin does not
write to the context, the orchestrator passes results on.

`borg-cyrus before`: config_schema (at load) -> locations -> modes (the
configured one freezes a view) -> view_ready -> mailbox_list -> dump ->
excludes; the manifest is merged from what they returned.
`borg-cyrus restore full`: restore_dump (each dumper restores what it dumped).
"""

import pluggy

hookspec = pluggy.HookspecMarker("borg_cyrus")
hookimpl = pluggy.HookimplMarker("borg_cyrus")


@hookspec
def config_schema():
    """Return {top-level key: JSON schema} for config keys this plugin owns."""


@hookspec
def modes():
    """Return a list of Mode subclasses (borg_cyrus.Mode) this plugin provides.

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


@hookspec(firstresult=True)
def mailbox_list(ctx, view, dump_dir):
    """Dump the mailbox list into dump_dir and return a MailboxList (its
    DumpRecord and the parsed mailboxes). The built-in `dumps` plugin answers
    (`ctl_mboxlist -d`); the first answer wins."""


@hookspec
def dump(ctx, view, dump_dir, mailboxes):
    """Write dumps into dump_dir (a fresh directory, mode 0700) and return a
    list of DumpRecord. Read Cyrus's data through `view` (use view.imapd_conf
    with the Cyrus tools) so dumps describe the same instant as the spool.
    mailboxes: the dumped mailbox list (cyrus.mboxlist.Mailbox). Raise
    BorgCyrusError to fail the backup."""


@hookspec
def excludes(ctx, view, mailboxes):
    """Return a list of Exclude (original paths; they are mapped through the
    view when the patterns file is written)."""


@hookspec
def restore_dump(ctx, dump):
    """`restore full`: bring back what this plugin dumped, from the dump
    directory (restore.dump.Dump: manifest, records, files, mailboxes), into
    a stopped server whose files `borg extract` put in place. Return report
    lines. The built-in dumper rebuilds mailboxes.db and annotations.db
    first (tryfirst); a plugin's hook runs after it."""


@hookspec
def restore_user_dump(ctx, dump, userid, user_dir):
    """`restore user`: bring back this plugin's per-user state of userid into
    the running server, after the user's mailboxes and archived per-user
    files are in place. user_dir: where this server keeps the user's files,
    (directory, True) in the uuid layout or (legacy file prefix
    `.../user/h/name.`, False). Return report lines."""
