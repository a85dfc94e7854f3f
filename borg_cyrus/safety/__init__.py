"""The security boundaries (docs/security.md): file access that follows nothing and never
blocks, refused locations, checks of names and paths from Cyrus and archives, work done as
the cyrus user, leaving the backup's control group."""
