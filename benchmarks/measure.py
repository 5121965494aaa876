"""Run a command as a child and write its wall time and its own peak RSS to a file, as JSON.

    python measure.py RESULT.json COMMAND [ARGS...]

Why a separate, small process: on Linux a child's ``ru_maxrss`` starts from its parent's peak
RSS (fork and vfork copy the memory map's high-water mark; exec keeps it), so a command spawned
by a large harness reports at least the harness's own peak. Spawned from this process, which
stays a few MiB, the figure is the command's. Standard input, output and error are passed
through; stdlib only, nothing else imported.
"""

import json
import os
import subprocess
import sys
import time


def main() -> int:
    result_path, args = sys.argv[1], sys.argv[2:]
    started = time.perf_counter()
    child = subprocess.Popen(args)
    _, status, usage = os.wait4(child.pid, 0)
    seconds = time.perf_counter() - started
    child.returncode = os.waitstatus_to_exitcode(status)
    with open(result_path, "w", encoding="utf-8") as result:
        json.dump({"seconds": seconds, "maxrss_kib": usage.ru_maxrss, "returncode": child.returncode}, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
