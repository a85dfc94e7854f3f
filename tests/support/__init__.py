"""What the tests (and the benchmarks) share: environments, the CLI, throwaway
filesystems, borgmatic runs, IMAP comparisons, control groups, clean roots."""
