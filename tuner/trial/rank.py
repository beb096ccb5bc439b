"""One rank of a data-parallel trial: ``python -m dstune.trial.rank SPEC RESULT``.

The job's launcher (:mod:`dstune.trial.distributed`) starts one of these per
rank through PyTorch's elastic agent, which sets ``RANK``, ``LOCAL_RANK`` and
``WORLD_SIZE``.  It runs the same trial code as a single-process trial
(:func:`dstune.trial.process.main`), writes ``RESULT.rank<N>``, and exits
non-zero when it did not measure, so the agent stops its peers at once
instead of leaving them waiting in a collective.
"""

from __future__ import annotations

import json
import os
import sys

from dstune.devices.processes import die_with_parent

from .distributed import LAUNCHER_ENV, exit_rank, rank_result_path


def main(argv: list[str] | None = None) -> None:
    die_with_parent()  # the launcher killed (a timeout) takes every rank with it
    launcher = os.environ.get(LAUNCHER_ENV)
    if launcher and os.getppid() != int(launcher):  # it died before this process could ask to follow it
        exit_rank(1)
    spec_path, result_path = sys.argv[1:] if argv is None else argv
    mine = rank_result_path(result_path, int(os.environ.get("RANK", "0")))
    from .process import main as trial_main

    code = trial_main([spec_path, str(mine)], rank=True)
    try:
        ok = json.loads(mine.read_text()).get("status") == "ok"
    except (OSError, ValueError):
        ok = False
    exit_rank(code if code else (0 if ok else 1))


if __name__ == "__main__":
    main()
