"""The Pareto front of measured configurations: throughput up, peak memory down.

The run's selection policies, the end-of-run summary and every read-only
view take the front the same way, so it lives here, apart from all of them.
"""

from __future__ import annotations

from typing import Any, Sequence


def pareto_front(rows: Sequence[Any]) -> list[Any]:
    """Rows not dominated in (samples/s up, peak memory down), fastest first."""
    front = []
    for row in rows:
        dominated = any(
            other.samples_per_s >= row.samples_per_s and other.peak_memory_bytes <= row.peak_memory_bytes
            and (other.samples_per_s > row.samples_per_s or other.peak_memory_bytes < row.peak_memory_bytes)
            for other in rows
        )
        if not dominated:
            front.append(row)
    return sorted(front, key=lambda r: -r.samples_per_s)
