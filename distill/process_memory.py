"""This process's resident memory: now, and its high-water mark since the process started.

    from distill.process_memory import current_rss_mib, peak_rss_mib
    use_huge_pages()   # before torch is imported: large CPU tensors on transparent huge pages

The benchmarks run each model in a fresh process and report that process's peak RSS. On Linux the
peak is /proc/self/status's VmHWM, which starts again with the new program. `getrusage`'s ru_maxrss
does not: it carries over the high-water mark of the process that forked the worker (a worker of a
600 MiB parent reports at least 600 MiB however little it uses), so it is read only where there is no
/proc (macOS, where it counts bytes). Imports nothing heavy, so a runtime's worker stays its own size.
"""

from __future__ import annotations

import os
import resource
import sys
from pathlib import Path

STATUS = Path("/proc/self/status")
# PyTorch's switch (c10's CPU allocator) for backing CPU allocations of 2 MiB and more with
# transparent huge pages, read once, at its first allocation
HUGE_PAGES = "THP_MEM_ALLOC_ENABLE"


def use_huge_pages() -> None:
    """Ask PyTorch for transparent huge pages under its large CPU tensors, unless the environment
    already says (THP_MEM_ALLOC_ENABLE=0 turns it off). A fresh [vocabulary x hidden] gradient or
    chunk of logits then faults in 2 MiB pages instead of 4 KiB ones: distillation at Qwen2's
    vocabulary on a CPU spends much of its time there (`python -m distill bench --part loss` prints
    the difference). Takes effect only before torch is imported; child processes inherit it. Linux
    with THP in "madvise" or "always" mode; elsewhere the variable changes nothing."""
    os.environ.setdefault(HUGE_PAGES, "1")


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
