"""Training scripts run under ``torchrun --nproc_per_node=2`` by ``test_integrations_torchrun.py``.

``peek``: plain DDP (gloo). Rank 0 alone peeks at a batch (``next(iter(loader))``), then both
ranks train 2 epochs; each rank records the dataset indices it saw per epoch (found from the
pixels, unique per sample in the test data) and its assembly threads.

``accelerate``: Hugging Face Accelerate on CPU. ``accelerator.prepare`` the model, optimizer,
the loader and a ``OneCycleLR`` sized with the documented recipe
(``epochs * len(loader) * accelerator.num_processes``); the loader is registered for
checkpointing. ``--save-at K`` saves the state after K steps and goes on; ``--resume DIR``
loads it and trains to the end. Each rank records (epoch, indices, lr) per step.
"""

from __future__ import annotations

import argparse
import json
import os

import torch

from vantix import VantixDataset, VantixLoader


def index_of_pixels(path: str) -> dict[bytes, int]:
    ds = VantixDataset(path)
    return {ds[i][0].tobytes(): i for i in range(len(ds))}


def assembly_threads() -> int:
    names = []
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/comm") as f:
                names.append(f.read().strip())
        except OSError:
            pass
    return sum(n.startswith("vantix-assemble") for n in names)


def peek(args: argparse.Namespace, table: dict[bytes, int]) -> dict:
    import torch.distributed as dist

    loader = VantixLoader(args.data, batch_size=4, shuffle=True, seed=3)  # before init
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    if rank == 0:
        images, _ = next(iter(loader))  # a peek (e.g. to log a batch) on rank 0 only
        assert len(images) == 4
    epochs, threads = [], []
    for _ in range(2):
        seen = []
        for images, _labels in loader:
            seen += [table[x.numpy().tobytes()] for x in images]
            threads.append(assembly_threads())
        epochs.append(seen)
    dist.barrier()
    dist.destroy_process_group()
    return {
        "rank": rank,
        "epochs": epochs,
        "threads_seen": max(threads),
        "num_threads_used": loader.num_threads_used,
        "cores": len(os.sched_getaffinity(0)),
        "local_world_size": int(os.environ["LOCAL_WORLD_SIZE"]),
    }


def accelerate(args: argparse.Namespace, table: dict[bytes, int]) -> dict:
    from accelerate import Accelerator

    accelerator = Accelerator(cpu=True)
    torch.manual_seed(0)
    loader = VantixLoader(args.data, batch_size=4, shuffle=True, seed=5)
    model = torch.nn.Linear(16 * 16 * 3, 4)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    # The recipe (docs/INTEGRATIONS.md): len(loader) is already per rank, and a prepared
    # scheduler steps once per process for every optimizer step.
    total = args.epochs * len(loader) * accelerator.num_processes
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=total)
    model, opt, loader_p, sched = accelerator.prepare(model, opt, loader, sched)
    assert loader_p is loader  # Accelerate leaves an unknown loader as it is
    accelerator.register_for_checkpointing(loader)
    if args.resume:
        accelerator.load_state(args.resume)
    steps = []
    step = 0  # steps taken by this run
    for epoch in range(loader.epoch, args.epochs):
        loader.set_epoch(epoch)
        for images, labels in loader:
            x = images.reshape(len(images), -1).float() / 255
            loss = torch.nn.functional.cross_entropy(model(x), labels % 4)
            accelerator.backward(loss)
            opt.step()
            sched.step()
            opt.zero_grad()
            step += 1
            steps.append(
                {
                    "epoch": epoch,
                    "indices": [table[t.numpy().tobytes()] for t in images],
                    "lr": sched.get_last_lr()[0],
                }
            )
            if step == args.save_at:
                accelerator.save_state(args.state_dir)
    accelerator.wait_for_everyone()
    return {
        "rank": accelerator.process_index,
        "steps": steps,
        "total_steps": total,
        "len": len(loader),
        "loader_rank": loader.rank,
        "loader_world_size": loader.world_size,
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["peek", "accelerate"])
    parser.add_argument("--data", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--save-at", type=int, default=0)
    parser.add_argument("--state-dir", default="")
    parser.add_argument("--resume", default="")
    args = parser.parse_args()
    torch.set_num_threads(1)
    table = index_of_pixels(args.data)
    result = (peek if args.mode == "peek" else accelerate)(args, table)
    with open(os.path.join(args.out, f"rank{result['rank']}.json"), "w") as f:
        json.dump(result, f)
