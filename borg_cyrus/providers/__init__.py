"""Frozen views, one module per provider: the base classes, snapshot machinery, dead-man
switch, mounts, live, stop-master, rsync-staging, btrfs, LVM, ZFS, command."""
