"""Restores: archive access, the staged session, listing, partial restores (user, mailbox),
the full-server restore, the restore drill (verify)."""
