"""Bad workload files and options: one clear paragraph, exit code 2, no traceback."""

from __future__ import annotations

import textwrap

import pytest

from .conftest import WORKLOADS, db_rows, run_cli


def _run(tmp_path, source: str, *extra: str):
    file = tmp_path / "workload.py"
    file.write_text(textwrap.dedent(source))
    return file, run_cli("run", str(file), "--db", str(tmp_path / "t.db"), "--trials", "1", *extra, cwd=tmp_path)


def _assert_usage_error(result, *fragments: str) -> None:
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in result.stderr, result.stderr


def test_missing_file(tmp_path):
    result = run_cli("run", str(tmp_path / "nope.py"), cwd=tmp_path)
    _assert_usage_error(result, "nope.py does not exist")


def test_syntax_error_names_file_and_line(tmp_path):
    file, result = _run(tmp_path, "import dstune\n\ndef broken(:\n    pass\n")
    _assert_usage_error(result, f"{file}:3", "syntax error")


def test_import_error_names_file_and_line(tmp_path):
    file, result = _run(tmp_path, "import dstune\nimport not_a_real_package_xyz\n")
    _assert_usage_error(result, f"{file}:2", "not_a_real_package_xyz")


def test_no_workload(tmp_path):
    _, result = _run(tmp_path, "import dstune\nx = 1\n")
    _assert_usage_error(result, "defines no workload", "@dstune.workload")


def test_two_workloads_need_a_name(tmp_path):
    result = run_cli("run", str(WORKLOADS / "observe.py"), "--db", str(tmp_path / "t.db"), cwd=tmp_path)
    _assert_usage_error(result, "defines several workloads", "observe_accum", "--workload NAME")


def test_unknown_workload_name(tmp_path):
    result = run_cli("run", str(WORKLOADS / "observe.py"), "--workload", "nope", "--db", str(tmp_path / "t.db"),
                     cwd=tmp_path)
    _assert_usage_error(result, "no workload named 'nope'", "observe_conv")


def test_workload_returning_the_wrong_thing(tmp_path):
    _, result = _run(tmp_path, """
        import dstune

        @dstune.workload
        def wrong(ctx):
            return 42
    """)
    _assert_usage_error(result, "returned int, not dstune.Workload")


@pytest.mark.parametrize("option,value,fragment", [
    ("--budget", "fifteen", "is not a duration"),
    ("--trial-timeout", "0s", "must be longer than zero"),
    ("--memory-budget", "lots", "is not a size"),
    ("--max-latency", "50", "is not a latency above zero"),
])
def test_bad_option_values(tmp_path, option, value, fragment):
    result = run_cli("run", str(WORKLOADS / "faults.py"), "--db", str(tmp_path / "t.db"), option, value,
                     cwd=tmp_path)
    _assert_usage_error(result, value, fragment)


def test_a_latency_limit_on_a_training_workload_is_refused(tmp_path):
    result = run_cli("run", str(WORKLOADS / "paced.py"), "--db", str(tmp_path / "t.db"), "--max-latency", "50ms",
                     cwd=tmp_path)
    _assert_usage_error(result, "--max-latency", "'paced'", "trains", "mode=\"inference\"")
    assert "--max-latency 50 ms" in " ".join(result.stderr.split())
    db = tmp_path / "t.db"
    if db.exists():  # refused before an iteration starts
        tables = {name for name, in db_rows(db, "select name from sqlite_master where type = 'table'")}
        assert "dstune_iterations" not in tables or db_rows(db, "select count(*) from dstune_iterations") == [(0,)]
