"""The README's first command: the quickstart example tunes on two CPU cores and records its trials."""

from __future__ import annotations

import sqlite3
import time

import pytest

from .conftest import ROOT, run_cli


@pytest.mark.slow
def test_readme_quickstart_command(tmp_path):
    started = time.monotonic()
    result = run_cli("run", str(ROOT / "examples" / "quickstart.py"), "--trials", "8", "--budget", "2m",
                     cwd=tmp_path, timeout=400)
    elapsed = time.monotonic() - started
    print(f"\nquickstart: {elapsed:.0f} s wall\n{result.stdout[-1500:]}")
    assert result.returncode == 0, result.stderr + result.stdout
    with sqlite3.connect(tmp_path / "dstune.db") as conn:  # the embedded default store
        statuses = [r[0] for r in conn.execute("select status from dstune_trials")]
        iteration = conn.execute("select status, chosen_config, decision from dstune_iterations").fetchone()
        applied = conn.execute("select count(*) from dstune_applied").fetchone()[0]
    # The budget is the promise a user sees: the whole iteration, check included, ends within it (process
    # start-up and the report aside). How many trials fit depends on the machine (eight on a quiet 2-core
    # CI host, fewer beside a busy process), so only the seeds and one more are required.
    assert elapsed < 120 * 1.05 + 15, elapsed
    assert len(statuses) >= 3 and statuses.count("ok") >= 2, statuses
    assert iteration[0] == "completed" and iteration[1] is not None and iteration[2] in ("promoted", "kept")
    assert applied == 1
    assert "Decision:" in result.stdout
