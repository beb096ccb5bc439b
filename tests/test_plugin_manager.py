"""The plugin manager: built-ins as ordinary plugins, chained model preparation, knob conflicts."""

from __future__ import annotations

import subprocess
import sys

import pytest

from dstune import Knob, hookimpl
from dstune.context import TuneContext
from dstune.errors import UsageError
from dstune.plugin_calls import applicable_knobs, chain_hook, pin_except
from dstune.plugin_manager import DEFAULT_PLUGINS, plugin_manager

from .conftest import ROOT

CTX = TuneContext(workload="w", device="cpu", cpu_count=2, bf16_supported=True)


class Extra:
    @hookimpl
    def dstune_knobs(self, ctx):
        return [Knob("extra_knob", choices=(1, 2), default=1, checklist=2)]

    @hookimpl(tryfirst=True)
    def dstune_prepare_model(self, model, config, ctx):
        return model + ["extra"]


def test_builtins_are_registered_like_any_plugin():
    names = plugin_manager().names()
    assert [m.rsplit(".", 1)[1] for m in DEFAULT_PLUGINS] == [n for n in names if n in
                                                             {m.rsplit(".", 1)[1] for m in DEFAULT_PLUGINS}]
    assert "compile" not in plugin_manager(disabled=["compile"]).names()


def test_planning_with_the_builtins_never_imports_torch():
    """The process that plans trials loads every plugin and asks for knobs and checks, but only trial processes
    touch torch: importing it there would cost every ``dstune run`` its import and teardown seconds."""
    script = ("import sys; from dstune.plugin_manager import plugin_manager; "
              "from dstune.context import TuneContext; from dstune.plugin_calls import applicable_knobs; "
              "pm = plugin_manager().pm; "
              "knobs = applicable_knobs(pm, TuneContext(workload='w', device='cuda', cpu_count=2, bf16_supported=True,"
              " capability=(9, 0), facts={'sdpa.used': True, 'memory_format.conv2d': 3, 'checkpoint.blocks': 4})); "
              "config = {k.name: k.default for k in knobs}; "
              "pm.hook.dstune_validate(config=config, ctx=TuneContext(workload='w', device='cpu', cpu_count=2)); "
              "print(len(knobs), 'torch' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    count, torch_imported = done.stdout.split()
    assert int(count) >= 10 and torch_imported == "False", done.stdout


def test_a_registered_plugin_adds_knobs_and_runs_in_order():
    pm = plugin_manager().pm
    pm.register(Extra(), name="extra")
    try:
        knobs = {k.name: k for k in applicable_knobs(pm, CTX)}
        assert knobs["extra_knob"].plugin == "extra" and knobs["compile"].plugin == "compile"
        prepared = chain_hook(pm, "dstune_prepare_model", ["model"], config={"compile": "off"}, ctx=CTX)
        assert prepared == ["model", "extra"]
    finally:
        pm.unregister(name="extra")


def test_two_plugins_declaring_one_knob_is_an_error():
    class Clash:
        @hookimpl
        def dstune_knobs(self, ctx):
            return [Knob("precision", choices=("fp32",), default="fp32", checklist="fp32")]

    pm = plugin_manager().pm
    pm.register(Clash(), name="clash")
    try:
        with pytest.raises(UsageError, match="both declare knob 'precision'"):
            applicable_knobs(pm, CTX)
    finally:
        pm.unregister(name="clash")


def test_knob_declarations_are_checked():
    with pytest.raises(ValueError, match="default value 3"):
        Knob("k", choices=(1, 2), default=3, checklist=1)
    with pytest.raises(ValueError, match="costly"):
        Knob("k", choices=(1, 2), default=1, checklist=1, costly=(1,))


def test_readme_hook_reference_is_generated_from_the_hookspecs():
    from dstune import hookspecs
    from dstune.hook_reference import render, replace_section

    readme = (ROOT / "README.md").read_text()
    assert replace_section(readme) == readme, "README is stale: run `python -m dstune.hook_reference README.md`"
    hooks = [name for name in dir(hookspecs) if name.startswith("dstune_")]
    assert len(hooks) == 12 and all(f"#### `{name}(" in render() for name in hooks)


def test_only_pins_the_other_knobs_of_a_gpu_including_those_with_fallback_choices():
    """On a GPU, optimizer_impl (fallback for-loop), precision (fp32) and matmul_precision (highest) declare
    fallbacks; ``--only batch_size`` pins them at one value, which raised "fallback choices must be among its
    choices" on the H200 before any trial ran."""
    gpu = TuneContext(workload="w", device="cuda", cpu_count=2, bf16_supported=True, capability=(9, 0),
                      facts={"sdpa.used": True})
    knobs = applicable_knobs(plugin_manager().pm, gpu)
    assert [k.name for k in knobs if k.fallback]  # the case in question
    values = {k.name: k.default for k in knobs}
    pinned = {k.name: k for k in pin_except(knobs, ["batch_size"], [], values)}
    assert pinned["batch_size"].choices == next(k for k in knobs if k.name == "batch_size").choices
    for name, knob in pinned.items():
        if name != "batch_size":
            assert knob.choices == (values[name],) and not knob.fallback
