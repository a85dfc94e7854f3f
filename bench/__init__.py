"""Benchmarks of borg-cyrus against the alternatives; `python -m bench --help`."""
