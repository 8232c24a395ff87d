"""A worker's peak RSS is its own, not the high-water mark of the process that started it."""

import subprocess
import sys
from pathlib import Path

import pytest

from distill.process_memory import current_rss_mib, peak_rss_mib

CHILD = (
    "import resource; from distill.process_memory import peak_rss_mib; "
    "print(peak_rss_mib(), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)"
)


@pytest.mark.skipif(not Path("/proc/self/status").is_file(), reason="Linux only: /proc/self/status")
def test_a_small_worker_of_a_large_parent_reports_its_own_peak():
    ballast = bytearray(300 * 2**20)
    ballast[::4096] = b"\1" * len(range(0, len(ballast), 4096))  # touch every page: resident
    parent_peak = peak_rss_mib()
    assert parent_peak >= 300
    done = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True, check=True)
    own, inherited = map(float, done.stdout.split())
    assert own < 100  # Python and this module only
    assert inherited >= 300  # what getrusage would have reported
    del ballast


def test_the_peak_is_never_below_what_is_resident_now():
    now = current_rss_mib()
    assert peak_rss_mib() >= now * 0.99 > 0
