"""Run the borg-cyrus CLI in this process and record peak memory.

    python -m bench.rss_wrap OUT.json [borg-cyrus arguments...]

Writes {"self_kb": peak RSS of this process, "exit": exit status} to OUT.json.

The peak is VmHWM from /proc/self/status: the high-water mark of this
process's own address space. getrusage()'s ru_maxrss is not usable here:
Linux carries it across fork and execve, so a process started by a large
parent reports the parent's size (the benchmark driver holds the plan of a
300k-message spool), and so do the Cyrus tools borg-cyrus starts.
"""

import json
import resource
import sys


def vm_hwm_kb():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return None


def main():
    out = sys.argv[1]
    sys.argv = ["borg-cyrus"] + sys.argv[2:]
    code = 0
    try:
        from borg_cyrus.cli import main as cli_main

        code = cli_main()
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    finally:
        with open(out, "w") as f:
            json.dump(
                {
                    "self_kb": vm_hwm_kb(),
                    "ru_maxrss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
                    "children_kb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss,
                    "exit": code,
                },
                f,
            )
    sys.exit(code or 0)


if __name__ == "__main__":
    main()
