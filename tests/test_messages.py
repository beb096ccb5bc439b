"""What a run prints of a trial's error: whole sentences, on a terminal or piped."""

from __future__ import annotations

from dstune.cli.progress import _last_line


def test_an_error_line_keeps_whole_sentences_and_never_ends_mid_word() -> None:
    interrupted = "stopped after 12 s because the budget ran out; it says nothing about the configuration"
    assert _last_line(interrupted) == interrupted
    long = ("the workload's loss (or output) is NaN or infinite in the fp32 eager reference itself, before any knob "
            "changed anything: the workload produces it, not the configuration. Check its loss and its batches "
            "(a log of zero, a division by zero, uninitialised data)")
    assert _last_line(long) == long.split(". ")[0] + "."
    traceback = 'Traceback (most recent call last):\n  File "w.py", line 3, in f\nValueError: ' + "word " * 80
    shown = _last_line(traceback)
    assert shown.startswith("ValueError: word word") and shown.endswith(" ...") and len(shown) <= 200
