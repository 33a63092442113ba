"""A Lightning training script as users write it: the VantixLoader is built before ``fit`` and
passed to it. Run by ``test_integrations_lightning.py`` (``strategy=ddp`` re-executes this file
for the second rank, so it must be a script).

Every rank writes ``<out>/rank<R>.json``: per training step the epoch Lightning is in, the
loader's epoch, and the dataset indices of the batch (found from the pixels, which are unique
per sample in the test data).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import lightning as L
import torch

from vantix import VantixDataset, VantixLoader


def index_of_pixels(path: str) -> dict[bytes, int]:
    ds = VantixDataset(path)
    table = {ds[i][0].tobytes(): i for i in range(len(ds))}
    assert len(table) == len(ds), "test images must be unique"
    return table


class Model(L.LightningModule):
    def __init__(self, table: dict[bytes, int], out: str) -> None:
        super().__init__()
        self.out = out
        self.net = torch.nn.Linear(16 * 16 * 3, 4)
        self.table = table
        self.steps: list[dict] = []

    def training_step(self, batch, batch_idx):
        images, labels = batch
        loader = self.trainer.train_dataloader
        self.steps.append(
            {
                "epoch": self.trainer.current_epoch,
                "loader_epoch": loader.epoch,
                "batch_idx": batch_idx,
                "global_step": self.trainer.global_step,
                "indices": [self.table[x.numpy().tobytes()] for x in images],
            }
        )
        x = images.reshape(len(images), -1).float() / 255
        return torch.nn.functional.cross_entropy(self.net(x), labels % 4)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)

    def on_train_end(self) -> None:
        loader = self.trainer.train_dataloader
        out = {
            "rank": self.global_rank,
            "world_size": self.trainer.world_size,
            "loader_rank": loader.rank,
            "loader_world_size": loader.world_size,
            "steps": self.steps,
        }
        with open(os.path.join(self.out, f"rank{self.global_rank}.json"), "w") as f:
            json.dump(out, f)


def main() -> None:
    loader = VantixLoader(ARGS.data, batch_size=ARGS.batch_size, shuffle=True, seed=7)
    callbacks = []
    if ARGS.save_every:
        callbacks.append(
            L.pytorch.callbacks.ModelCheckpoint(
                dirpath=ARGS.out, every_n_train_steps=ARGS.save_every, save_top_k=-1
            )
        )
    trainer = L.Trainer(
        accelerator="cpu",
        devices=2,
        strategy=ARGS.strategy,
        max_epochs=ARGS.epochs,
        logger=False,
        enable_checkpointing=bool(ARGS.save_every),
        callbacks=callbacks,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    trainer.fit(Model(index_of_pixels(ARGS.data), ARGS.out), loader, ckpt_path=ARGS.ckpt)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--strategy", default="ddp")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--save-every", type=int, default=0)
    parser.add_argument("--ckpt", default=None)
    ARGS = parser.parse_args()
    torch.set_num_threads(1)
    main()
    sys.exit(0)
