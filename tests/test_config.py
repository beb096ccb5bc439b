"""Config files, environment and command line: who wins, what a bad file says, and a real run that uses one.

Also the terminal: a run on a TTY shows a progress bar with an ETA and colour,
piped output has no escape codes; shell completion and ``--version``.
"""

from __future__ import annotations

import json
import os
import pty
import select
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import pytest

from .conftest import WORKLOADS, cli_in_process, db_rows, run_cli

PYPROJECT = """\
[project]
name = "team-models"

[tool.dstune]
budget = "30m"
trials = 12
only = ["precision", "batch_size"]
db = "runs/tuning.db"
check_repeats = 4
"""


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    (tmp_path / "pyproject.toml").write_text(PYPROJECT)
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "observe.py").write_text((WORKLOADS / "observe.py").read_text())
    for name in ("DSTUNE_DB", "DSTUNE_TRIALS", "DSTUNE_BUDGET", "DSTUNE_CHECK_REPEATS", "DSTUNE_ONLY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _settings(capsys: pytest.CaptureFixture[str], *args: str) -> dict[str, dict[str, object]]:
    code, out, err = cli_in_process(capsys, "config", *args, "--json")
    assert code == 0, err
    return {row["setting"]: row for row in json.loads(out)["settings"]}


def test_command_line_beats_env_beats_the_nearest_file_beats_defaults(project, capsys, monkeypatch):
    monkeypatch.setenv("DSTUNE_TRIALS", "7")
    settings = _settings(capsys, "models/observe.py", "--check-repeats", "9")
    pyproject = project / "pyproject.toml"
    assert settings["budget"]["value"] == "30m" and settings["budget"]["source"] == f"{pyproject}, line 5"
    assert settings["trials"]["value"] == 7 and settings["trials"]["source"] == "env DSTUNE_TRIALS"
    assert settings["check-repeats"]["value"] == 9 and settings["check-repeats"]["source"] == "command line"
    assert settings["only"]["value"] == ["precision", "batch_size"]
    assert settings["db"]["value"] == str(project / "runs" / "tuning.db")  # relative to the file that names it
    assert settings["select"] == {"setting": "select", "value": "max-throughput", "source": "default",
                                  "env": "DSTUNE_SELECT"}

    # A dstune.toml next to the workload is nearer: it wins, and the pyproject above it is not read at all.
    (project / "models" / "dstune.toml").write_text('budget = "5m"\nexclude = "compile"\n')
    settings = _settings(capsys, "models/observe.py")
    assert settings["budget"]["value"] == "5m" and settings["budget"]["source"].startswith(str(project / "models" / "dstune.toml"))
    assert settings["exclude"]["value"] == ["compile"] and settings["only"]["source"] == "default"
    assert settings["trials"]["source"] == "env DSTUNE_TRIALS"

    # Without a workload file, the file is looked for from the current folder.
    assert _settings(capsys)["db"]["value"] == str(project / "runs" / "tuning.db")


@pytest.mark.parametrize("text, problem", [
    ('[tool.dstune]\nbudget = "30m"\nbudgte = "1h"\n', "line 3: unknown setting 'budgte'"),
    ('[tool.dstune]\ntrials = 0\n', "line 2: trials = 0: Input should be greater than or equal to 1"),
    ('[tool.dstune]\n\nbudget = "soon"\n', "line 3: budget 'soon' is not a duration"),
    ('[tool.dstune]\nonly = [1, 2]\nselect = "fastest"\n', "line 3: select: --select 'fastest' is not a selection policy"),
    ('[tool.dstune\ntrials = 3\n', "is not valid TOML (Expected ']' at the end of a table declaration (at line 1"),
])
def test_a_bad_config_file_is_named_with_its_line_and_nothing_runs(project, capsys, text, problem):
    (project / "models" / "pyproject.toml").write_text(text)
    code, _, err = cli_in_process(capsys, "config", "models/observe.py")
    assert code == 2 and str(project / "models" / "pyproject.toml") in err and problem in err, err
    # `dstune run` refuses it the same way, before it starts anything or touches a database.
    result = run_cli("run", "models/observe.py", "--workload", "observe", "--db", "never.db", cwd=project)
    assert result.returncode == 2 and problem in " ".join(result.stderr.split()), result.stderr
    assert not (project / "never.db").exists()


def _run_on_a_tty(args: list[str], cwd: Path, timeout: float = 300) -> tuple[int, str]:
    """Run ``dstune ARGS`` with a pseudo-terminal as stdout and stderr, as a person at a terminal would."""
    main, secondary = pty.openpty()
    env = {**os.environ, "COLUMNS": "160", "TERM": "xterm-256color"}
    env.pop("NO_COLOR", None)
    process = subprocess.Popen([sys.executable, "-m", "dstune", *args], cwd=cwd, stdin=subprocess.DEVNULL,
                               stdout=secondary, stderr=secondary, env=env)
    os.close(secondary)
    chunks = []
    while True:
        ready, _, _ = select.select([main], [], [], timeout)
        if not ready:
            process.kill()
            raise AssertionError("no output from dstune run for %s s" % timeout)
        try:
            data = os.read(main, 65536)
        except OSError:  # the terminal closed: the process has exited
            break
        if not data:
            break
        chunks.append(data)
    os.close(main)
    return process.wait(timeout=30), b"".join(chunks).decode(errors="replace")


def test_a_run_takes_its_settings_from_the_file_and_shows_progress_with_eta_on_a_terminal(project):
    (project / "models" / "dstune.toml").write_text(
        'trials = 3\nbudget = "2m"\ndb = "tuned.db"\ncheck-repeats = 2\nexclude = ["optimizer_impl"]\n'
        'windows = 2\nwindow-time = 0.05\ndisable-plugins = ["compile"]\n')
    code, screen = _run_on_a_tty(["run", "models/observe.py", "--workload", "observe", "--max-warmup", "2"], project)
    assert code == 0, screen
    assert "\x1b[" in screen  # colour and redrawing on a terminal
    assert "ETA" in screen and "trial" in screen and "Decision:" in screen

    db = project / "models" / "tuned.db"  # where the file put it, relative to the file
    options = json.loads(db_rows(db, "select options from dstune_iterations")[0][0])
    assert options["trials"] == 3 and options["check_repeats"] == 2 and options["exclude"] == ["optimizer_impl"]
    assert options["disabled_plugins"] == ["compile"]
    configs = [json.loads(c) for (c,) in db_rows(db, "select config from dstune_trials")]
    assert len(configs) == 3 and {c["optimizer_impl"] for c in configs} == {"default"}  # excluded: never tuned

    # Piped output has no escape codes; commands without a workload find the db through the file too.
    history = run_cli("history", "observe", cwd=project / "models")
    assert history.returncode == 0 and "\x1b[" not in history.stdout and "observe: iterations" in history.stdout


def test_shell_completion_and_version():
    script = Path(sys.executable).with_name("dstune")
    env = {**os.environ, "_DSTUNE_COMPLETE": "complete_bash", "COMP_WORDS": "dstune rep", "COMP_CWORD": "1"}
    completed = subprocess.run([str(script)], env=env, capture_output=True, text=True, timeout=60)
    assert completed.returncode == 0 and completed.stdout.split() == ["report"], completed
    env.update(COMP_WORDS="dstune run --bud", COMP_CWORD="2")
    completed = subprocess.run([str(script)], env=env, capture_output=True, text=True, timeout=60)
    assert "--budget" in completed.stdout.split(), completed
    printed = subprocess.run([str(script), "--version"], capture_output=True, text=True, timeout=60)
    assert printed.stdout.strip() == f"dstune {version('dstune')}"


def test_schedule_add_daemon_worker_and_status_in_a_folder_with_a_config_file_use_its_store(project):
    """Every command resolves the store the same way: a ``db`` in the config file holds for all of them."""
    (project / "runs").mkdir()
    added = run_cli("schedule", "add", "models/observe.py", "--cron", "0 3 * * 0", cwd=project)
    assert added.returncode == 0, added.stderr
    daemon = run_cli("daemon", "--once", "--idle-window", "0", cwd=project, timeout=120)
    assert daemon.returncode == 0, daemon.stderr
    store = project / "runs" / "tuning.db"
    assert "runs/tuning.db" in daemon.stderr  # the daemon's log names the store it serves
    assert [r[0] for r in db_rows(store, "select workload_file from dstune_schedules")] == \
        [str(project / "models" / "observe.py")]
    assert [r[0] for r in db_rows(store, "select status from dstune_daemons")] == ["stopped"]
    worker = run_cli("worker", "--study", "nobody-runs-this", "--wait", "0", cwd=project, timeout=120)
    assert worker.returncode == 2 and "runs/tuning.db" in worker.stderr, worker.stderr
    status = run_cli("status", "--json", cwd=project)
    assert status.returncode == 0 and len(json.loads(status.stdout)["queue"]) == 1, status.stdout
    assert not (project / "dstune.db").exists()


def test_config_shows_brackets_and_the_effective_defaults_whole_at_80_columns(tmp_path):
    from .conftest import run_cli

    result = run_cli("config", cwd=tmp_path, env={"COLUMNS": "80"})
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "none found (dstune.toml, or [tool.dstune] in pyproject.toml)" in out
    assert "0.9 (of the device's memory)" in out and "None" not in out
    assert "/dstune.db" in out  # the path the default means (wrapped in its cell at 80 columns)
    assert "…" not in out and max(len(line) for line in out.splitlines()) <= 80


def test_help_plugins_and_history_are_whole_at_80_columns(tmp_path):
    from .conftest import run_cli

    narrow = {"COLUMNS": "80"}
    help_text = run_cli("run", "--help", cwd=tmp_path, env=narrow).stdout
    for option in ("--fail-on-regression", "--no-numerics-guard", "--memory-model", "--strict-plugins"):
        assert option in help_text
    plugins = run_cli("plugins", cwd=tmp_path, env=narrow).stdout
    assert "knob batch_size" in plugins and "checklist:" in plugins
    db = str(tmp_path / "h.db")
    run_cli("run", str(WORKLOADS / "nan_loss.py"), "--db", db, "--trials", "2", "--budget", "1m", cwd=tmp_path)
    history = run_cli("history", "nan_loss", "--db", db, cwd=tmp_path, env=narrow).stdout
    assert "iteration 1" in history and "status: completed" in history
    for text in (help_text, plugins, history):
        assert "…" not in text and max(len(line) for line in text.splitlines()) <= 80, text
