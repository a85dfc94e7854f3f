"""The backup run: before/after orchestration, locations, dumps, excludes, consistency,
manifest, the borg patterns file."""
