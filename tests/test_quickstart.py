"""The README's first command: the quickstart example tunes on two CPU cores and records its trials."""

from __future__ import annotations

import sqlite3
import time

import pytest

from .conftest import ROOT, run_cli


@pytest.mark.slow
def test_readme_quickstart_command(tmp_path):
    started = time.monotonic()
    result = run_cli("run", str(ROOT / "examples" / "quickstart.py"), "--trials", "10", "--budget", "150s",
                     cwd=tmp_path, timeout=400)
    elapsed = time.monotonic() - started
    print(f"\nquickstart: {elapsed:.0f} s wall\n{result.stdout[-1500:]}")
    assert result.returncode == 0, result.stderr + result.stdout
    with sqlite3.connect(tmp_path / "dstune.db") as conn:  # the embedded default store
        statuses = [r[0] for r in conn.execute("select status from dstune_trials")]
        iteration = conn.execute("select status, chosen_config from dstune_iterations").fetchone()
    assert len(statuses) >= 8 and statuses.count("ok") >= 3, statuses
    assert iteration[0] == "completed" and iteration[1] is not None
    assert "vs default" in result.stdout
