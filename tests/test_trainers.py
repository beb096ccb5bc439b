"""Exports in effect in the real trainers: Hugging Face ``Trainer`` and Lightning's ``Trainer`` on the CPU.

Each trains a few steps of a tiny model built from its config, with nothing
but dstune's exported arguments (and, for Lightning, its callback), and
reports from inside the training what was in effect.  Each runs in a process
of its own: the settings are process-wide (threads, matmul precision).
"""

from __future__ import annotations

import json
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from dstune.best_config import BestConfig
from dstune.context import TuneContext
from dstune.export import DstuneExportWarning, export

from .conftest import QUICK_RUN, WORKLOADS, run_cli

# A configuration tuned on the CPU for a global batch of 16: bf16, 4 micro-batches of 4, 2 loader workers.
CONTEXT = TuneContext(workload="tiny", device="cpu", global_batch_size=16).__dict__
CONFIG = {"precision": "bf16", "batch_size": 4, "loader_workers": 2, "persistent_workers": True,
          "prefetch_factor": 2, "pin_memory": False, "optimizer_impl": "foreach", "compile": "off",
          "compile_dynamic": "auto", "activation_checkpointing": True, "matmul_precision": "highest",
          "intra_op_threads": None, "interop_threads": None}

HF_SCRIPT = """
import json, sys, torch, transformers
from transformers import GPT2Config, GPT2LMHeadModel, Trainer, TrainerCallback, TrainingArguments
kwargs = json.load(open(sys.argv[1]))
model = GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=128, n_positions=32))
seen = {"micro": [], "autocast": [], "steps": 0}
model.transformer.h[0].register_forward_pre_hook(
    lambda module, args: (seen["micro"].append(int(args[0].shape[0])),
                          seen["autocast"].append(torch.get_autocast_dtype("cpu") is torch.bfloat16
                                                  and torch.is_autocast_enabled("cpu"))) and None)

class Tokens(torch.utils.data.Dataset):
    def __len__(self):
        return 64
    def __getitem__(self, i):
        ids = torch.randint(0, 128, (32,), generator=torch.Generator().manual_seed(i))
        return {"input_ids": ids, "labels": ids}

class Steps(TrainerCallback):
    def on_step_end(self, args, state, control, **kw):
        seen["steps"] = state.global_step

args = TrainingArguments(output_dir=sys.argv[2], max_steps=3, report_to=[], logging_steps=1, save_strategy="no",
                         use_cpu=True, **kwargs)
trainer = Trainer(model=model, args=args, train_dataset=Tokens(), callbacks=[Steps()])
loader = trainer.get_train_dataloader()
trainer.train()
print(json.dumps({**seen, "workers": loader.num_workers if hasattr(loader, "num_workers") else
                  loader.base_dataloader.num_workers, "checkpointing": model.is_gradient_checkpointing,
                  "nan_filter": trainer.args.logging_nan_inf_filter,
                  "optimizer": type(trainer.optimizer.optimizer if hasattr(trainer.optimizer, "optimizer")
                                    else trainer.optimizer).__name__}))
"""


def _run(script: str, *args: str) -> dict:
    done = subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_transformers_trainer_trains_with_the_exported_arguments(tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("error", DstuneExportWarning)  # every knob of this configuration has an argument
        kwargs = export(BestConfig("tiny", CONFIG, context=CONTEXT), "transformers")
    assert kwargs["bf16"] is True and kwargs["per_device_train_batch_size"] == 4
    assert kwargs["gradient_accumulation_steps"] == 4 and kwargs["dataloader_num_workers"] == 2
    assert kwargs["optim"] == "adamw_torch" and kwargs["gradient_checkpointing"] is True
    assert kwargs["logging_nan_inf_filter"] is False  # its per-step NaN test waits for the GPU every step
    (tmp_path / "args.json").write_text(json.dumps(kwargs))
    seen = _run(HF_SCRIPT, str(tmp_path / "args.json"), str(tmp_path / "out"))
    assert seen["steps"] == 3 and seen["micro"][:12] == [4] * 12  # 3 steps x 4 micro-batches of 4 (and recomputes)
    assert all(seen["autocast"])  # bf16 autocast in every forward
    assert seen["workers"] == 2 and seen["checkpointing"] is True and seen["optimizer"] == "AdamW"
    assert seen["nan_filter"] is False


LIGHTNING_SCRIPT = """
import json, sys, torch, lightning
import torch.nn.functional as F
from torch import nn
from dstune.integrations.lightning import DstuneCallback
kwargs, settings = json.load(open(sys.argv[1])), json.load(open(sys.argv[2]))
callback = DstuneCallback(settings)  # first: process-wide settings before any work
seen = {"micro": [], "autocast": [], "steps": 0}

class Tiny(lightning.LightningModule):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 8 * 8, 4))
    def training_step(self, batch, index):
        x, y = batch
        seen["micro"].append(int(x.shape[0]))
        seen["autocast"].append(torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") is torch.bfloat16)
        seen["channels_last"] = self.net[0].weight.is_contiguous(memory_format=torch.channels_last)
        seen["compiled"] = self.net._compiled_call_impl is not None
        seen["threads"] = torch.get_num_threads()
        seen["matmul"] = torch.get_float32_matmul_precision()
        return F.cross_entropy(self.net(x.to(memory_format=torch.channels_last)).float(), y)
    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)
    def on_train_batch_end(self, *args):
        seen["steps"] = self.trainer.global_step

data = torch.utils.data.TensorDataset(torch.randn(64, 3, 8, 8), torch.randint(0, 4, (64,)))
loader = torch.utils.data.DataLoader(data, batch_size=callback.batch_size, **callback.loader_kwargs)
trainer = lightning.Trainer(max_steps=3, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                            enable_model_summary=False, callbacks=[callback], **kwargs)
module = Tiny()
trainer.fit(module, loader)
seen.update(precision=str(trainer.precision), workers=loader.num_workers, state_keys=sorted(module.state_dict()))
print(json.dumps(seen))
"""


def test_lightning_trainer_trains_with_the_exported_arguments_and_the_callback(tmp_path):
    config = {**CONFIG, "memory_format": "channels_last", "compile": "default", "intra_op_threads": 1,
              "matmul_precision": "medium"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DstuneExportWarning)
        exported = export(BestConfig("tiny", config, context=CONTEXT), "lightning")
    assert dict(exported) == {"precision": "bf16-mixed", "accumulate_grad_batches": 4}
    assert {"compile": "default", "memory_format": "channels_last", "intra_op_threads": 1, "batch_size": 4,
            "loader_workers": 2, "matmul_precision": "medium"}.items() <= exported.callback.items()
    (tmp_path / "trainer.json").write_text(json.dumps(dict(exported)))
    (tmp_path / "callback.json").write_text(json.dumps(exported.callback))
    seen = _run(LIGHTNING_SCRIPT, str(tmp_path / "trainer.json"), str(tmp_path / "callback.json"))
    assert seen["precision"] == "bf16-mixed" and all(seen["autocast"])
    assert seen["steps"] == 3 and seen["micro"] == [4] * 12  # 3 optimizer steps of 4 accumulated micro-batches
    assert seen["workers"] == 2  # the DataLoader built from the callback's loader_kwargs
    assert seen["channels_last"] and seen["compiled"] and seen["threads"] == 1 and seen["matmul"] == "medium"
    assert seen["state_keys"][0].startswith("net.0.")  # compiled in place: checkpoints keep their names


@pytest.fixture(scope="module")
def tuned_store(tmp_path_factory) -> Path:
    """One short real run of a workload with a global batch, shared by the export and dashboard tests."""
    folder = tmp_path_factory.mktemp("tuned")
    db = folder / "export.db"
    ran = run_cli("run", str(WORKLOADS / "observe.py"), "--workload", "observe_conv_accum", "--db", str(db),
                  "--trials", "1", "--check-repeats", "2", "--budget", "60s", *QUICK_RUN, cwd=folder)
    assert ran.returncode == 0, ran.stdout[-2000:] + ran.stderr[-2000:]
    return db


def test_export_cli_writes_each_trainers_arguments_and_names_what_it_cannot_express(tmp_path, tuned_store):
    db = tuned_store
    for target in ("transformers", "lightning", "accelerate"):
        out = tmp_path / f"{target}.json"
        done = run_cli("export", "observe_conv_accum", "--db", str(db), "--format", target, "-o", str(out),
                       cwd=tmp_path)
        assert done.returncode == 0, done.stderr
        written = json.loads(out.read_text())
        key = {"transformers": "gradient_accumulation_steps", "lightning": "accumulate_grad_batches",
               "accelerate": "gradient_accumulation_steps"}[target]
        assert key in written, written
    lightning_callback = json.loads((tmp_path / "lightning.callback.json").read_text())
    assert "batch_size" in lightning_callback
    bad = run_cli("export", "observe_conv_accum", "--db", str(db), "--format", "keras", cwd=tmp_path)
    assert bad.returncode == 2 and "transformers, lightning, accelerate" in bad.stderr


def test_a_third_party_plugins_knob_is_named_in_a_warning_unless_its_plugin_maps_it():
    with pytest.warns(DstuneExportWarning, match=r"my_knob=3 has no accelerate setting .*dstune_export hook"):
        export({"my_knob": 3, "precision": "fp16"}, "accelerate")


def test_dashboard_serves_the_stores_studies_and_names_the_workloads(tmp_path, tuned_store):
    """optuna-dashboard on the store in use: the workload's study is listed by its API while the command runs."""
    import socket
    import time
    import urllib.request

    db = tuned_store
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "dstune", "dashboard", "observe_conv_accum", "--db", str(db),
                               "--port", str(port)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              cwd=tmp_path)
    try:
        deadline, studies = time.monotonic() + 60, None
        while time.monotonic() < deadline and studies is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies", timeout=5) as answer:
                    studies = json.loads(answer.read())
            except OSError:
                time.sleep(0.5)
        assert studies is not None, "the dashboard never answered"
        assert [s["study_name"] for s in studies["study_summaries"]] == ["observe_conv_accum-it1"]
    finally:
        server.terminate()
        printed = server.communicate(timeout=30)[0]
    assert f"observe_conv_accum-it1: http://127.0.0.1:{port}/dashboard/studies/" in printed
    missing = run_cli("dashboard", "--db", str(tmp_path / "none.db"), cwd=tmp_path)
    assert missing.returncode == 2 and not (tmp_path / "none.db").exists()  # never creates a store


@pytest.mark.parametrize("workload", ["lightning_classifier", "hf_tiny_gpt2"])
def test_dstune_run_tunes_a_lightning_module_and_a_hugging_face_model_as_they_are(tmp_path, workload):
    """No rewriting as a dstune.Workload: the adapters take the module with its DataModule (its training_step's
    loss, configure_optimizers' AdamW) and the HF model with its dataset and collator."""
    db = tmp_path / "adapters.db"
    ran = run_cli("run", str(WORKLOADS / "from_trainers.py"), "--workload", workload, "--db", str(db),
                  "--trials", "1", "--check-repeats", "2", "--budget", "90s", *QUICK_RUN, cwd=tmp_path)
    assert ran.returncode == 0, ran.stdout[-3000:] + ran.stderr[-3000:]
    import sqlite3

    with sqlite3.connect(db) as conn:
        rows = conn.execute("select status, json_extract(config, '$.batch_size'), json_extract(config, "
                            "'$.optimizer_impl') from dstune_trials").fetchall()
    assert rows == [("ok", 16 if workload == "lightning_classifier" else 8, "default")], rows  # as declared
