"""Peak resident memory, as the kernel reports it (what the benchmarks and asset metadata print)."""

from __future__ import annotations

import resource


def peak_rss_mb(children: bool = False) -> float:
    """This process's peak resident set in MiB, or (``children``) the largest of its waited-for
    children's. Linux reports ``ru_maxrss`` in KiB."""
    who = resource.RUSAGE_CHILDREN if children else resource.RUSAGE_SELF
    return resource.getrusage(who).ru_maxrss / 1024
