"""The example third-party plugin, installed with pip from its own folder, is found and used through its entry point."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys

import pytest

from .conftest import ROOT, WORKLOADS, run_cli

EXAMPLE = ROOT / "examples" / "dstune-plugin-example"


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> dict[str, str]:
    """pip-install the example (a copy, so the build leaves the source tree clean) into a folder on PYTHONPATH."""
    root = tmp_path_factory.mktemp("example-plugin")
    source = root / "src"
    shutil.copytree(EXAMPLE, source)
    target = root / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                    "--target", str(target), str(source)], check=True, capture_output=True, text=True)
    return {"PYTHONPATH": os.pathsep.join([str(target), os.environ.get("PYTHONPATH", "")])}


def test_dstune_plugins_lists_the_installed_plugin(installed, tmp_path):
    result = run_cli("plugins", cwd=tmp_path, env=installed)
    assert result.returncode == 0, result.stderr
    rows = [line for line in result.stdout.splitlines() if "│ example" in line]
    assert any("0.2.0" in row and "flush_denormal" in row and "yes" in row for row in rows), result.stdout
    assert any("tunableop" in row and "no" in row for row in rows), result.stdout  # CUDA only


def test_a_run_tunes_the_plugins_knob_and_it_takes_effect(installed, tmp_path):
    db = tmp_path / "p.db"
    result = run_cli("run", str(WORKLOADS / "observe.py"), "--workload", "observe", "--db", str(db),
                     "--only", "flush_denormal", "--trials", "2", "--check-repeats", "2", "--window-time", "0.05",
                     "--windows", "2", cwd=tmp_path, env=installed)
    assert result.returncode == 0, result.stdout + result.stderr
    with sqlite3.connect(db) as conn:
        tried = sorted(conn.execute("select json_extract(config, '$.flush_denormal'), status from dstune_trials"))
        facts = conn.execute("select json_extract(facts, '$.plugins.example') from dstune_environments").fetchone()
    assert tried == [(0, "ok"), (1, "ok")] and facts == ("0.2.0",)
    # The knob's effect, in a process configured the way a trial is (dstune.apply).
    probe = ("import sys, torch, dstune; sys.path.insert(0, sys.argv[1]); import observe; "
             "dstune.apply(observe.observe, {'flush_denormal': True}); "
             "print('flushed' if torch.tensor([1e-40]) * 1.0 == 0 else 'kept')")
    applied = subprocess.run([sys.executable, "-c", probe, str(WORKLOADS)], capture_output=True, text=True,
                             env={**os.environ, **installed}, timeout=120)
    assert applied.stdout.strip() == "flushed", applied.stderr


def test_the_plugins_knob_exports_through_its_own_hook(installed, tmp_path):
    """dstune_export: Lightning's callback applies flush_denormal (through the plugin's own process hook); for
    Transformers a warning says how to set it by hand, not that no plugin maps it."""
    probe = ("import json, warnings, torch, dstune.export as export\n"
             "from dstune.integrations.lightning import DstuneCallback\n"
             "with warnings.catch_warnings(record=True) as caught:\n"
             "    warnings.simplefilter('always')\n"
             "    hf = export.transformers({'flush_denormal': True})\n"
             "    pl = export.lightning({'flush_denormal': True})\n"
             "DstuneCallback(pl.callback)\n"
             "print(json.dumps({'hf': dict(hf), 'warnings': [str(w.message) for w in caught], 'callback': pl.callback,"
             " 'flushed': bool(torch.tensor([1e-40]) * 1.0 == 0)}))")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120,
                          env={**os.environ, **installed}, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    found = json.loads(done.stdout.strip().splitlines()[-1])
    assert found["callback"] == {"flush_denormal": True} and found["flushed"] is True
    assert found["hf"] == {"logging_nan_inf_filter": False} and len(found["warnings"]) == 1  # only what every export sets
    assert "flush_denormal=True: transformers has no setting for it" in found["warnings"][0]
    assert "torch.set_flush_denormal(True)" in found["warnings"][0]


@pytest.mark.gpu
def test_tunableop_knob_tunes_gemms_on_cuda(installed, tmp_path):
    probe = ("import sys, torch, dstune; sys.path.insert(0, sys.argv[1]); import observe; "
             "dstune.apply(observe.observe, {'tunableop': 'tune'}); "
             "a = torch.randn(512, 512, device='cuda'); (a @ a).sum().item(); "
             "print(torch.cuda.tunable.is_enabled(), torch.cuda.tunable.tuning_is_enabled(), "
             "len(torch.cuda.tunable.get_results()))")
    applied = subprocess.run([sys.executable, "-c", probe, str(WORKLOADS)], capture_output=True, text=True,
                             env={**os.environ, **installed, "DSTUNE_CACHE_DIR": str(tmp_path)}, timeout=300)
    print("\ntunableop enabled, tuning, tuned GEMMs:", applied.stdout.strip())
    enabled, tuning, tuned = applied.stdout.split()
    assert (enabled, tuning) == ("True", "True") and int(tuned) >= 1, applied.stderr
