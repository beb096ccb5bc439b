"""Parse and print durations and sizes the way people type them."""

from __future__ import annotations

import math
import re

from .errors import UsageError

_DURATION = re.compile(r"^(?:(?P<h>\d+(?:\.\d+)?)h)?(?:(?P<m>\d+(?:\.\d+)?)m)?(?:(?P<s>\d+(?:\.\d+)?)s?)?$")
_SIZE = re.compile(r"^(?P<n>\d+(?:\.\d+)?)\s*(?P<u>[KMGT]i?B|B)?$", re.IGNORECASE)
_UNITS = {"b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
          "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


def parse_duration(text: str, option: str, allow_zero: bool = False) -> float:
    """'15m', '90s', '1h30m' or plain seconds ('600') to seconds; zero only where ``allow_zero``."""
    match = _DURATION.match(text.strip()) if text and text.strip() else None
    if not match or not any(match.groupdict().values()):
        raise UsageError(f"{option} {text!r} is not a duration. Write it like 90s, 15m or 1h30m.")
    h, m, s = (float(match.group(k) or 0) for k in ("h", "m", "s"))
    seconds = h * 3600 + m * 60 + s
    if seconds <= 0 and not (allow_zero and seconds == 0):
        raise UsageError(f"{option} {text!r} must be longer than zero. Write it like 90s, 15m or 1h30m.")
    return seconds


_LATENCY = re.compile(r"^(?P<n>\d+(?:\.\d+)?)\s*(?P<u>ms|s)$", re.IGNORECASE)


def parse_latency(text: str, option: str) -> float:
    """A latency limit in seconds, from '50ms' or '0.2s' (a unit is required: 50 alone is ambiguous)."""
    match = _LATENCY.match(text.strip()) if text else None
    seconds = float(match.group("n")) * (1e-3 if match.group("u").lower() == "ms" else 1.0) if match else 0.0
    if seconds <= 0:
        raise UsageError(f"{option} {text!r} is not a latency above zero. Write it with its unit, like 50ms or 0.2s.")
    return seconds


def format_latency(seconds: float) -> str:
    return f"{seconds * 1e3:.3g} ms" if seconds < 1 else f"{seconds:.3g} s"


def parse_memory_budget(text: str | None, device_memory: int) -> int:
    """A size ('20GiB', '512MB') or a fraction of the device's memory ('0.9'); default 90%."""
    if text is None:
        return int(device_memory * 0.9)
    value = text.strip()
    try:
        fraction = float(value)
    except ValueError:
        fraction = None
    if fraction is not None and 0 < fraction <= 1:
        return int(device_memory * fraction)
    match = _SIZE.match(value)
    if not match or match.group("u") is None:
        raise UsageError(
            f"--memory-budget {text!r} is not a size. Give a size like 20GiB or 512MB, or a fraction of "
            "the device's memory between 0 and 1 like 0.8."
        )
    return int(float(match.group("n")) * _UNITS[match.group("u").lower()])


def format_bytes(n: float | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def format_duration(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def budget_minutes(seconds: float) -> str:
    """A ``--budget`` value to suggest: whole minutes, rounded up (``7m``)."""
    return f"{math.ceil(seconds / 60)}m"
