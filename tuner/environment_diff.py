"""What changed in the environment between two iterations (GPU, driver, CUDA, torch, plugins, workload).

The Plan phase records the difference; ``dstune history``, ``show`` and the
report print it.  Both sides read it here, so the views need none of the run.
"""

from __future__ import annotations

from typing import Any

IGNORED_FACTS = ("host", "executable")



def _flatten(facts: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in facts.items():
        if prefix == "" and key in IGNORED_FACTS:
            continue
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def diff_facts(before: dict[str, Any] | None, after: dict[str, Any]) -> list[dict[str, Any]]:
    """Changed environment facts as ``{"fact", "before", "after"}``, sorted by fact (plugins as ``plugins.NAME``)."""
    if before is None:
        return []
    old, new = _flatten(before), _flatten(after)
    return [{"fact": key, "before": old.get(key), "after": new.get(key)}
            for key in sorted(set(old) | set(new)) if old.get(key) != new.get(key)]


def format_change(change: dict[str, Any]) -> str:
    return f"{change['fact']}: {change['before']} -> {change['after']}"
