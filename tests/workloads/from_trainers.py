"""Workloads a user already has, tuned without rewriting: a LightningModule with its DataModule, and a Hugging
Face model with a dataset and a collator."""

import lightning
import torch
import torch.nn.functional as F
from torch import nn
from transformers import GPT2Config, GPT2LMHeadModel, default_data_collator

import dstune
from dstune.integrations.lightning import workload_from as from_lightning
from dstune.integrations.transformers import workload_from as from_transformers


class Classifier(lightning.LightningModule):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 4))

    def training_step(self, batch, index):
        x, y = batch
        loss = F.cross_entropy(self.net(x), y)
        self.log("train_loss", loss)
        return {"loss": loss}

    def configure_optimizers(self):
        optimizer = torch.optim.AdamW(self.parameters(), lr=1e-3)
        return [optimizer], [torch.optim.lr_scheduler.StepLR(optimizer, 10)]


class Points(lightning.LightningDataModule):
    def setup(self, stage):
        generator = torch.Generator().manual_seed(0)
        self.data = torch.utils.data.TensorDataset(torch.randn(256, 32, generator=generator),
                                                   torch.randint(0, 4, (256,), generator=generator))

    def train_dataloader(self):
        return torch.utils.data.DataLoader(self.data, batch_size=16, shuffle=True)


@dstune.workload(global_batch_size=32, batch_size=16)
def lightning_classifier(ctx):
    return from_lightning(Classifier(), datamodule=Points())


class Tokens(torch.utils.data.Dataset):
    def __len__(self):
        return 64

    def __getitem__(self, index):
        ids = torch.randint(0, 128, (32,), generator=torch.Generator().manual_seed(index))
        return {"input_ids": ids, "labels": ids}


@dstune.workload(global_batch_size=16, batch_size=8)
def hf_tiny_gpt2(ctx):
    model = GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=128, n_positions=32))
    return from_transformers(model, Tokens(), default_data_collator)
