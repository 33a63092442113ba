"""Train a small CNN with PyTorch DDP from a packed dataset, on CPU processes (gloo).

    vantix-pack ./train --size 32 -o train.vtx
    torchrun --nproc_per_node=2 examples/ddp_train.py --data train.vtx --epochs 2

Every rank builds the same ``VantixLoader``; rank and world size come from torch.distributed,
so each rank reads its own disjoint share of every epoch's permutation and all ranks step the
same number of times. ``--resume`` restores model, optimiser and loader state mid-epoch.
"""

from __future__ import annotations

import argparse
import os

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

from vantix import VantixLoader


def make_model(num_classes: int) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(8),
        nn.Flatten(),
        nn.Linear(16 * 8 * 8, num_classes),
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True, help="packed dataset (vantix-pack output)")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=64, help="per rank")
    p.add_argument("--max-steps", type=int, default=0, help="stop each epoch early (0: no)")
    p.add_argument("--checkpoint", default="", help="save model/optimiser/loader state here")
    p.add_argument("--resume", action="store_true", help="continue from --checkpoint")
    args = p.parse_args()

    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(0)

    loader = VantixLoader(args.data, batch_size=args.batch_size, shuffle=True, seed=0)
    model = nn.parallel.DistributedDataParallel(make_model(len(loader.classes)))
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    if args.resume and os.path.exists(args.checkpoint):
        state = torch.load(args.checkpoint, weights_only=False)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        loader.load_state_dict(state["loader"])

    while loader.epoch < args.epochs:
        epoch, total, correct, seen = loader.epoch, 0.0, 0, 0
        for step, (images, labels) in enumerate(loader):
            x = images.permute(0, 3, 1, 2).float().div_(255)  # NHWC uint8 -> NCHW float
            out = model(x)
            loss = F.cross_entropy(out, labels)
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.item() * len(labels)
            correct += (out.argmax(1) == labels).sum().item()
            seen += len(labels)
            if args.checkpoint and rank == 0:
                torch.save(
                    {
                        "model": model.state_dict(),
                        "optimizer": opt.state_dict(),
                        "loader": loader.state_dict(),
                    },
                    args.checkpoint,
                )
            if args.max_steps and step + 1 >= args.max_steps:
                break
        stats = torch.tensor([total, correct, seen], dtype=torch.float64)
        dist.all_reduce(stats)
        if rank == 0:
            print(
                f"epoch {epoch}: {int(stats[2])} samples on {world} ranks, "
                f"loss {stats[0] / stats[2]:.3f}, accuracy {stats[1] / stats[2]:.3f}",
                flush=True,
            )
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
