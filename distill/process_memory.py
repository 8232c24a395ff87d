"""This process's resident memory: now, and its high-water mark since the process started.

    from distill.process_memory import current_rss_mib, peak_rss_mib

The benchmarks run each model in a fresh process and report that process's peak RSS. On Linux the
peak is /proc/self/status's VmHWM, which starts again with the new program. `getrusage`'s ru_maxrss
does not: it carries over the high-water mark of the process that forked the worker (a worker of a
600 MiB parent reports at least 600 MiB however little it uses), so it is read only where there is no
/proc (macOS, where it counts bytes). Imports nothing heavy, so a runtime's worker stays its own size.
"""

from __future__ import annotations

import resource
import sys
from pathlib import Path

STATUS = Path("/proc/self/status")


def peak_rss_mib() -> float:
    """The high-water mark of this process's resident memory, in MiB."""
    if STATUS.is_file():
        for line in STATUS.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024


def current_rss_mib() -> float:
    """This process's resident memory now, in MiB."""
    import psutil

    return psutil.Process().memory_info().rss / 2**20
