"""Learning from crashes within an iteration: a knob value that keeps crashing is not proposed again.

A crash is data, but the same crash twice is waste.  Each crashed trial's
error is reduced to a signature (the exception's message with numbers,
addresses and paths taken out, and with the wrapping exceptions of
compilers peeled off, so an eager crash and the same crash under
``torch.compile`` match).  The knob values a crash can be blamed on are the
ones of its configuration that no successful trial used: when those come
down to one value, or two crashes of one signature share at most two such
values, those values are banned for the rest of the iteration.  The search
is told a banned configuration is infeasible, and the ban, with the trials
that taught it, is recorded with the iteration.

Everything here is derived from the iteration's trial rows, so every
process of a scaled-out run (each folds every process's rows) reaches the
same bans.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from dstune.knobs import Config

OK_STATUSES = frozenset({"ok", "pruned"})  # the configuration ran: none of its values crashes by itself
MAX_BLAMED = 2  # two crashes of one signature ban at most this many values at once
_WRAPPER = re.compile(r"^([A-Za-z_][\w.]*(Error|Exception|Failed|Exit)):\s*(.+)$")
_GOT = re.compile(r"got (\w+(?:Error|Exception))\((['\"])(.+?)\2\)")
_NOISE = (
    (re.compile(r"0x[0-9a-fA-F]+"), "<address>"),
    (re.compile(r"(/[^\s:'\"]+)+"), "<path>"),
    (re.compile(r"\d+(\.\d+)?"), "N"),
)


def signature(error: str | None) -> str | None:
    """The crash's message without what differs between runs of it; None for an error with no message.

    From a traceback, the last line that names an exception.  Exception
    names wrapping another (``BackendCompilerFailed: ... RuntimeError: X``)
    are peeled off down to the innermost message, so an eager crash and the
    same crash under compilation share one signature.
    """
    wrapped = _GOT.search(error or "")  # dynamo: "... got RuntimeError('message')"
    if wrapped:
        error = f"{wrapped.group(1)}: {wrapped.group(3)}"
    lines = [line.strip() for line in (error or "").strip().splitlines() if line.strip()]
    named = [line for line in lines if _WRAPPER.match(line)]
    if not (named or lines):
        return None
    text = (named or lines)[-1]
    while (match := _WRAPPER.match(text)) is not None:
        inner = match.group(3)
        if not _WRAPPER.match(inner):
            text = f"{match.group(1).rsplit('.', 1)[-1]}: {inner}"
            break
        text = inner
    for pattern, replacement in _NOISE:
        text = pattern.sub(replacement, text)
    return text[:300]


@dataclass(frozen=True)
class Ban:
    """A knob value not proposed again in this iteration, and why."""

    knob: str
    value: Any
    signature: str
    trials: tuple[int, ...]  # the numbers of the trials that crashed with it

    @property
    def reason(self) -> str:
        which = ", ".join(str(n) for n in self.trials)
        return (f"{self.knob}={self.value} is not proposed again in this iteration: trial{'s' if len(self.trials) > 1 else ''} "
                f"{which} crashed with it ({self.signature})")

    def to_dict(self) -> dict[str, Any]:
        return {"knob": self.knob, "value": self.value, "signature": self.signature, "trials": list(self.trials),
                "reason": self.reason}


@dataclass
class FailureMemory:
    """The crashes and successes of one iteration so far, and the bans they justify."""

    tunable: frozenset[str] = frozenset()  # only knobs the search varies can be blamed
    ran: set[tuple[str, str]] = field(default_factory=set)  # (knob, value as text) of configurations that ran
    crashes: dict[str, list[tuple[int, Config]]] = field(default_factory=dict)  # signature -> (number, config)
    bans: dict[tuple[str, str], Ban] = field(default_factory=dict)

    @staticmethod
    def _values(config: Config) -> set[tuple[str, str]]:
        return {(k, repr(v)) for k, v in config.items()}

    def fold(self, status: str, config: Config, number: int | None, error: str | None) -> list[Ban]:
        """Learn from one ended trial; the bans it adds (usually none)."""
        if status in OK_STATUSES:
            self.ran |= self._values(config)
            return []
        sig = signature(error) if status == "crash" else None
        if sig is None:
            return []
        self.crashes.setdefault(sig, []).append((number or 0, dict(config)))
        return self._blame(sig)

    def _blame(self, sig: str) -> list[Ban]:
        crashed = self.crashes[sig]
        suspects = {(k, v) for k, v in set.intersection(*(self._values(c) - self.ran for _, c in crashed))
                    if k in self.tunable}
        if not suspects or (len(suspects) > 1 and (len(crashed) < 2 or len(suspects) > MAX_BLAMED)):
            return []
        numbers = tuple(sorted(n for n, _ in crashed))
        config = crashed[-1][1]
        added = []
        for knob, shown in sorted(suspects):
            if (knob, shown) not in self.bans:
                ban = Ban(knob, config[knob], sig, numbers)
                self.bans[(knob, shown)] = ban
                added.append(ban)
        return added

    def banned(self, config: Config) -> Ban | None:
        """The first ban ``config`` runs into; None if it has none."""
        return next((self.bans[v] for v in sorted(self._values(config)) if v in self.bans), None)
