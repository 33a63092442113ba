"""End-to-end training: time per epoch with torchvision ``ImageFolder`` + ``DataLoader`` against
``VantixLoader``, same model, optimizer, batches and augmentation recipe, in one run.

For each model (``--models``, default all three):

* ``Small_MLP``: a 3-layer MLP (3*S*S -> 512 -> 256 -> classes) on ``cifar-like`` (32x32 PNG);
* ``Medium_CNN``: five 3x3 conv + BatchNorm + ReLU layers (32-32-64-64-128 channels, three
  max-pools), global average pooling and a linear layer, on ``cifar-like``;
* ``Large_MobileNetV3``: ``torchvision.models.mobilenet_v3_large(weights=None,
  num_classes=...)`` (random init: nothing is downloaded; BatchNorm momentum 0.1, see
  ``large_mobilenet_v3``), on ``imagenet-std`` (JPEG q90 around
  500x375) at 112x112;

the script

1. writes (or reuses) the profile's synthetic ImageFolder with ``prepare_data.make_image_folder``
   into ``DATA/training/<profile>-<num_images>/train`` (default ``data/bench``, git-ignored; its
   own folder, so the other benchmarks' caches are never replaced) and packs it raw into the
   sibling ``train-<P>-raw.vtx`` (reused while it matches the source; ``--repack`` forces it).
   It checks that the pack holds the same samples, in the same order, with the same labels, as
   ``ImageFolder`` finds (no file skipped), so dataset index ``i`` is the same image for both.
2. splits the samples once with ``vantix.train_val_split(pack, val_fraction, seed)`` (stratified):
   ``VantixLoader(indices=...)`` and ``torch.utils.data.Subset`` get the same train and
   validation indices.
3. builds one model with ``torch.manual_seed(seed)`` and a deep copy of it, so both runs start
   from the same weights, each with its own optimizer (AdamW, or SGD with Nesterov momentum:
   ``--optimizer``), and trains them on the same device (CUDA when available, else the CPU),
   one epoch each in turn (the order alternates every epoch, so drift on a shared machine hits
   both alike): epoch 0 is a warm-up, then ``--epochs`` timed epochs. Both loaders shuffle with
   seed ``--seed``, use ``drop_last=True`` and the same batch size, so both runs take the same
   number of optimizer steps on the same number of samples per epoch; every batch is a float32
   ``[B, 3, S, S]`` tensor, normalised, checked on the first batch of every epoch.
4. evaluates both trained models on the validation split with both evaluation pipelines (a
   2x2 matrix): each loader's accuracy on its own pipeline is the headline, the cross terms show
   that the two pipelines feed the same images (their predictions for the same model agree).

The loaders:

* baseline: ``DataLoader(ImageFolder(root, transform), batch_size, shuffle=True,
  num_workers=os.cpu_count(), pin_memory=True, drop_last=True)`` over the source files, batches
  moved to the device with ``non_blocking=True``. Workers are not persistent (the default),
  so each epoch starts them, as it does for most users; ``--persistent-workers`` keeps them.
* ``VantixLoader(pack, batch_size, shuffle=True, drop_last=True, indices=train, <recipe>,
  dtype="float32", layout="NCHW", device=<cuda or None>)``: the same augmentations in Rust, on
  the packed records.

The recipes (S = ``--image-size``, P = the pack size):

* ``cifar-like`` (``crop``): train ``RandomCrop(S, padding=S//8)`` + ``RandomHorizontalFlip()`` +
  ``ToTensor()`` + ``Normalize(CIFAR mean, std)``; eval ``CenterCrop(S)`` + ``ToTensor()`` +
  ``Normalize``. The pack is at P = S (the images' own 32x32 by default), so the packed image is
  the original and Vantix's ``random_crop=S, padding=S//8, horizontal_flip=0.5`` /
  ``center_crop=S`` are the very same transforms (pixel-identical, only the random draws differ).
  With ``--image-size`` other than 32, both start with ``Resize(S)`` + ``CenterCrop(S)`` (what
  the packer does).
* ``imagenet-std`` (``rrc``): train ``RandomResizedCrop(S)`` + ``RandomHorizontalFlip()`` +
  ``ToTensor()`` + ``Normalize(ImageNet mean, std)`` on the source JPEGs; eval ``Resize(P)`` +
  ``CenterCrop(S)`` + ``ToTensor()`` + ``Normalize``. The pack is at P = round(S * 256 / 224)
  (128 for S = 112; ``--pack-size`` overrides): a little larger than the training crop, as
  docs/AUGMENTATION.md advises for random-resized-crop, and the usual 256/224 evaluation ratio,
  so Vantix's ``center_crop=S`` on the pack (``Resize(P)`` + ``CenterCrop(P)`` at packing) *is*
  torchvision's ``Resize(P)`` + ``CenterCrop(S)`` (up to the packer's resize, within 1.5 levels
  of Pillow, and a one-pixel rounding of the crop offset). Training differs in where the crop is
  taken from: torchvision crops the whole source image, Vantix the packed P x P centre square
  (upsampling crops smaller than (S/P)^2 of it); the same rule, the same output size, the same
  work per step for the model. That is the trade-off of packing (docs/AUGMENTATION.md).

What is timed: one training epoch, from creating the loader's iterator (so the DataLoader's
worker start-up is included) to the end of its last optimizer step (CUDA synchronised). The
report gives, per model and loader, every epoch's seconds, their mean and standard deviation
over the timed epochs (warm-up excluded), the time saved per epoch (mean DataLoader - mean
Vantix) and the speed-up (their ratio), the training loss and accuracy per epoch and the final
validation accuracies. ``accuracy_3se`` is three standard errors of the difference of two
accuracies on that many validation images: a difference within it is evaluation noise (two
training runs with different random draws differ by more on short runs).

Outputs: ``--out`` (default ``assets/benchmark_training.json``) and one chart per model,
``ASSETS/time_savings_<model>.png`` (``--assets-dir``, default ``assets``): seconds per epoch of
both loaders with the speed-up and accuracies in the title and the machine in a caption.

Defaults (each overridable for all selected models by ``--num-images``, ``--epochs``,
``--batch-size``, ``--image-size``, ``--profile``)::

    model              profile       images  S    P    batch  timed epochs (+1 warm-up)
    Small_MLP          cifar-like    5000    32   32   128    3
    Medium_CNN         cifar-like    5000    32   32   128    2
    Large_MobileNetV3  imagenet-std  800     112  128  32     4

Usage::

    python benchmarks/benchmark_training.py                                  # all three
    python benchmarks/benchmark_training.py --models Small_MLP Medium_CNN --epochs 5
    python benchmarks/benchmark_training.py --smoke --out /tmp/t.json --assets-dir /tmp/a
"""

from __future__ import annotations

import argparse
import copy
import datetime
import gc
import math
import os
import statistics
import textwrap
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import torch
import torch.nn.functional as F
from common import (
    REPO,
    add_output_options,
    check_at_least_one,
    command,
    ensure_pack,
    rel,
    report_head,
    report_machine,
    write_report,
)
from torch import nn

import prepare_data
import vantix

CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CIFAR_SOURCE_SIZE = 32  # prepare_data's cifar-like images (and real CIFAR-10) are 32x32
EVAL_RATIO = 224 / 256  # crop / resize of the usual evaluation transform
LOADERS = ("torchvision", "vantix")
LABELS = {"torchvision": "DataLoader", "vantix": "VantixLoader"}


# ==============================================================================================
# Models
# ==============================================================================================


def small_mlp(num_classes: int, image_size: int) -> nn.Module:
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(3 * image_size * image_size, 512),
        nn.ReLU(inplace=True),
        nn.Linear(512, 256),
        nn.ReLU(inplace=True),
        nn.Linear(256, num_classes),
    )


def medium_cnn(num_classes: int, image_size: int) -> nn.Module:
    def block(cin: int, cout: int) -> list[nn.Module]:
        conv = nn.Conv2d(cin, cout, 3, padding=1, bias=False)
        return [conv, nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]

    return nn.Sequential(
        *block(3, 32),
        *block(32, 32),
        nn.MaxPool2d(2),
        *block(32, 64),
        *block(64, 64),
        nn.MaxPool2d(2),
        *block(64, 128),
        nn.MaxPool2d(2),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(128, num_classes),
    )


def large_mobilenet_v3(num_classes: int, image_size: int) -> nn.Module:
    import torchvision

    model = torchvision.models.mobilenet_v3_large(weights=None, num_classes=num_classes)
    # torchvision builds MobileNetV3's BatchNorm layers with momentum 0.01, tuned for ImageNet
    # runs of ~10^6 steps: after the ~100 steps of this benchmark their running statistics are
    # still mostly the initial (0, 1), so evaluation predicts one class whatever the weights.
    # PyTorch's default momentum (0.1) lets them follow training; both loaders get the same.
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.momentum = 0.1
    return model


@dataclass(frozen=True)
class ModelSpec:
    """A model and its default workload."""

    name: str
    build: Callable[[int, int], nn.Module]  # (num_classes, image_size) -> model
    profile: str
    image_size: int
    num_images: int
    batch_size: int
    epochs: int  # timed, after one warm-up epoch


MODELS = {
    m.name: m
    for m in (
        ModelSpec("Small_MLP", small_mlp, "cifar-like", 32, 5000, 128, 3),
        ModelSpec("Medium_CNN", medium_cnn, "cifar-like", 32, 5000, 128, 2),
        ModelSpec("Large_MobileNetV3", large_mobilenet_v3, "imagenet-std", 112, 800, 32, 4),
    )
}
# --smoke: tiny sizes (CI, quick checks), unless given explicitly.
SMOKE = {"cifar-like": (256, 32), "imagenet-std": (64, 64), "4k-medical": (40, 64)}
# Image size when --profile puts a model on another profile than its own.
PROFILE_SIZE = {"cifar-like": 32, "imagenet-std": 128, "4k-medical": 128}


# ==============================================================================================
# Augmentation recipes: the same transforms for both loaders
# ==============================================================================================


@dataclass(frozen=True)
class Recipe:
    kind: str  # "crop" (RandomCrop + padding, the CIFAR recipe) or "rrc" (RandomResizedCrop)
    image_size: int  # S: what the model sees
    pack_size: int  # P: the packed records' side
    resize_source: bool  # torchvision resizes the source to P first (eval; and train for crop)
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    @property
    def padding(self) -> int:
        return max(1, self.image_size // 8)

    def _tail(self) -> list[Any]:
        import torchvision.transforms as T

        return [T.ToTensor(), T.Normalize(self.mean, self.std)]

    def _resize(self) -> list[Any]:
        import torchvision.transforms as T

        if not self.resize_source:
            return []
        if self.kind == "crop":  # what the packer did: Resize(P) + CenterCrop(P)
            return [T.Resize(self.pack_size), T.CenterCrop(self.pack_size)]
        return [T.Resize(self.pack_size)]

    def torchvision_train(self) -> Any:
        import torchvision.transforms as T

        s = self.image_size
        if self.kind == "crop":
            crop = [*self._resize(), T.RandomCrop(s, padding=self.padding)]
        else:
            crop = [T.RandomResizedCrop(s)]
        return T.Compose([*crop, T.RandomHorizontalFlip(), *self._tail()])

    def torchvision_eval(self) -> Any:
        import torchvision.transforms as T

        return T.Compose([*self._resize(), T.CenterCrop(self.image_size), *self._tail()])

    def _output(self) -> dict[str, Any]:
        return {"mean": self.mean, "std": self.std, "dtype": "float32", "layout": "NCHW"}

    def vantix_train(self) -> dict[str, Any]:
        s = self.image_size
        if self.kind == "crop":
            crop: dict[str, Any] = {"random_crop": s, "padding": self.padding}
        else:
            crop = {"random_resized_crop": s}
        return {**crop, "horizontal_flip": 0.5, **self._output()}

    def vantix_eval(self) -> dict[str, Any]:
        return {"center_crop": self.image_size, **self._output()}

    def describe(self) -> dict[str, Any]:
        def jsonable(options: dict[str, Any]) -> dict[str, Any]:
            return {k: list(v) if isinstance(v, tuple) else v for k, v in options.items()}

        return {
            "kind": self.kind,
            "image_size": self.image_size,
            "pack_size": self.pack_size,
            "train": {
                "torchvision": repr(self.torchvision_train()),
                "vantix": jsonable(self.vantix_train()),
            },
            "eval": {
                "torchvision": repr(self.torchvision_eval()),
                "vantix": jsonable(self.vantix_eval()),
            },
        }


def make_recipe(profile: str, image_size: int, pack_size: Optional[int]) -> Recipe:
    if pack_size is not None and pack_size < image_size:
        raise SystemExit(
            f"error: --pack-size {pack_size} is smaller than the image size {image_size}"
        )
    if profile == "cifar-like":
        p = pack_size or image_size
        resize = not (p == CIFAR_SOURCE_SIZE and image_size == CIFAR_SOURCE_SIZE)
        return Recipe("crop", image_size, p, resize, CIFAR_MEAN, CIFAR_STD)
    p = pack_size or max(image_size, round(image_size / EVAL_RATIO))
    return Recipe("rrc", image_size, p, True, IMAGENET_MEAN, IMAGENET_STD)


# ==============================================================================================
# Data
# ==============================================================================================

_PREPARED: dict[tuple[str, int, int], dict[str, Any]] = {}


def prepare(profile: str, num_images: int, pack_size: int, args: argparse.Namespace) -> dict:
    """The profile's ImageFolder (written unless present) and its raw pack at ``pack_size``,
    once per run; returns their description (``root`` and ``pack`` as paths)."""
    key = (profile, num_images, pack_size)
    if key in _PREPARED:
        return _PREPARED[key]
    root = args.data_dir / "training" / f"{profile}-{num_images}" / "train"
    cifar_root = args.cifar_root if profile == "cifar-like" else None
    folder = prepare_data.make_image_folder(root, profile, num_images, cifar_root=cifar_root)
    print(
        f"  source  {rel(root)}: {folder.num_images} images,"
        f" {folder.bytes_on_disk / 1e6:.1f} MB ({folder.source}, {folder.seconds:.1f} s)"
    )
    pack = ensure_pack(root, folder.num_images, pack_size, "raw", args.repack)
    print(f"  pack    {rel(pack.path)}: {pack.nbytes / 1e6:.1f} MB ({pack.how})")
    info = {
        "root": root,
        "pack": pack.path,
        "json": {
            "profile": profile,
            "source": rel(root),
            "source_kind": folder.source,
            "num_images": folder.num_images,
            "source_bytes": folder.bytes_on_disk,
            "pack": rel(pack.path),
            "pack_size": pack_size,
            "pack_bytes": pack.nbytes,
            "pack_seconds": pack.seconds,
        },
    }
    _PREPARED[key] = info
    return info


def check_same_samples(image_folder: Any, packed: vantix.VantixDataset) -> None:
    """Raise unless the pack holds ImageFolder's samples: same classes, count and labels in
    order (the packer keeps ImageFolder's file order), and no skipped file."""
    skipped = vantix.inspect(packed.path)["skipped"]
    problems = []
    if skipped:
        problems.append(f"{skipped} source files were skipped at packing")
    if list(image_folder.classes) != packed.classes:
        problems.append("the classes differ")
    if len(image_folder) != len(packed) or list(image_folder.targets) != packed.targets:
        problems.append(f"{len(image_folder)} vs {len(packed)} samples, or labels in another order")
    if problems:
        raise RuntimeError(
            f"{packed.path} does not hold the samples of {image_folder.root}: "
            + "; ".join(problems)
            + " (run again with --repack)"
        )


# ==============================================================================================
# Training and evaluation
# ==============================================================================================


def plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def check_batch(name: str, images: torch.Tensor, size: int) -> None:
    expected = (3, size, size)
    if tuple(images.shape[1:]) != expected or images.dtype != torch.float32:
        raise RuntimeError(
            f"{name}: a batch of {tuple(images.shape)} {images.dtype}, expected"
            f" [B, {', '.join(map(str, expected))}] torch.float32"
        )


def train_epoch(
    name: str,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    loader: Any,
    device: torch.device,
    epoch: int,
    image_size: int,
) -> dict[str, Any]:
    """One epoch of training; timed from creating the iterator to the end of the last step."""
    model.train()
    if isinstance(loader, vantix.VantixLoader):
        loader.set_epoch(epoch)
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    correct = torch.zeros((), dtype=torch.int64, device=device)
    samples = steps = 0
    sync(device)
    t0 = time.perf_counter()
    for images, labels in loader:
        if steps == 0:
            check_batch(name, images, image_size)
        images = images.to(device, non_blocking=True)
        labels = labels.to(device, non_blocking=True)
        logits = model(images)
        loss = F.cross_entropy(logits, labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        # Accumulated on the device: no synchronisation per step.
        loss_sum += loss.detach() * labels.shape[0]
        correct += (logits.argmax(1) == labels).sum()
        samples += int(labels.shape[0])
        steps += 1
    sync(device)
    seconds = time.perf_counter() - t0
    if steps == 0:
        raise RuntimeError(f"{name}: no batch in epoch {epoch}")
    return {
        "seconds": seconds,
        "steps": steps,
        "samples": samples,
        "loss": loss_sum.item() / samples,
        "accuracy": correct.item() / samples,
    }


@torch.no_grad()
def evaluate(
    model: nn.Module, loader: Any, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, float]:
    """(predictions, labels, seconds) over one pass of ``loader``, in its order."""
    model.eval()
    preds, targets = [], []
    t0 = time.perf_counter()
    for images, labels in loader:
        preds.append(model(images.to(device, non_blocking=True)).argmax(1).cpu())
        targets.append(labels.cpu())
    seconds = time.perf_counter() - t0
    return torch.cat(preds), torch.cat(targets), seconds


def make_optimizer(model: nn.Module, args: argparse.Namespace) -> torch.optim.Optimizer:
    if args.optimizer == "sgd":
        return torch.optim.SGD(
            model.parameters(),
            lr=args.lr,
            momentum=0.9,
            nesterov=True,
            weight_decay=args.weight_decay,
        )
    return torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)


def torchvision_loader(
    dataset: Any, batch_size: int, *, train: bool, seed: int, persistent: bool
) -> torch.utils.data.DataLoader:
    generator = torch.Generator()
    generator.manual_seed(seed)
    return torch.utils.data.DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=train,
        drop_last=train,
        num_workers=os.cpu_count() or 1,
        pin_memory=True,
        persistent_workers=persistent,
        generator=generator,
    )


# ==============================================================================================
# One model
# ==============================================================================================


@dataclass(frozen=True)
class Settings:
    """A model's workload after the command line's overrides."""

    profile: str
    image_size: int
    num_images: int
    batch_size: int
    epochs: int


def settings_for(spec: ModelSpec, args: argparse.Namespace) -> Settings:
    profile = args.profile or spec.profile
    smoke_images, smoke_size = SMOKE[profile]
    default_size = spec.image_size if profile == spec.profile else PROFILE_SIZE[profile]
    return Settings(
        profile=profile,
        image_size=args.image_size or (smoke_size if args.smoke else default_size),
        num_images=args.num_images or (smoke_images if args.smoke else spec.num_images),
        batch_size=args.batch_size or (32 if args.smoke else spec.batch_size),
        epochs=args.epochs or (1 if args.smoke else spec.epochs),
    )


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """A loader's epochs (the first is the warm-up) as JSON."""
    timed = [r["seconds"] for r in runs[1:]]
    return {
        "warmup_seconds": runs[0]["seconds"],
        "epoch_seconds": timed,
        "mean_epoch_seconds": statistics.fmean(timed),
        "std_epoch_seconds": statistics.stdev(timed) if len(timed) > 1 else 0.0,
        "images_per_s": sum(r["samples"] for r in runs[1:]) / sum(timed),
        "steps_per_epoch": runs[0]["steps"],
        "samples_per_epoch": runs[0]["samples"],
        "train_loss": [r["loss"] for r in runs],
        "train_accuracy": [r["accuracy"] for r in runs],
    }


def run_model(spec: ModelSpec, args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    """Train ``spec`` with both loaders, interleaved; everything measured, as JSON."""
    from torch.utils.data import Subset
    from torchvision.datasets import ImageFolder

    s = settings_for(spec, args)
    recipe = make_recipe(s.profile, s.image_size, args.pack_size)
    print(
        f"\n{spec.name}: {s.profile}, {s.num_images} images, {s.image_size}x{s.image_size}"
        f" (pack {recipe.pack_size}), batch {s.batch_size}, {plural(s.epochs, 'timed epoch')}"
        " + 1 warm-up"
    )
    data = prepare(s.profile, s.num_images, recipe.pack_size, args)
    root, pack = str(data["root"]), str(data["pack"])
    packed = vantix.VantixDataset(pack)
    folders = {
        "train": ImageFolder(root, transform=recipe.torchvision_train()),
        "eval": ImageFolder(root, transform=recipe.torchvision_eval()),
    }
    check_same_samples(folders["train"], packed)
    train_idx, val_idx = vantix.train_val_split(packed, args.val_fraction, seed=args.seed)
    if len(train_idx) < s.batch_size or len(val_idx) == 0:
        raise SystemExit(
            f"error: {spec.name}: {len(train_idx)} training and {len(val_idx)} validation images"
            f" for batch {s.batch_size}: use more --num-images or a smaller --batch-size"
        )
    cuda = device if device.type == "cuda" else None
    train = {
        "torchvision": torchvision_loader(
            Subset(folders["train"], train_idx.tolist()),
            s.batch_size,
            train=True,
            seed=args.seed,
            persistent=args.persistent_workers,
        ),
        "vantix": vantix.VantixLoader(
            packed,
            batch_size=s.batch_size,
            shuffle=True,
            seed=args.seed,
            drop_last=True,
            indices=train_idx,
            device=cuda,
            **recipe.vantix_train(),
        ),
    }
    evals = {
        "torchvision": torchvision_loader(
            Subset(folders["eval"], val_idx.tolist()),
            s.batch_size,
            train=False,
            seed=args.seed,
            persistent=False,
        ),
        "vantix": vantix.VantixLoader(
            packed,
            batch_size=s.batch_size,
            shuffle=False,
            indices=val_idx,
            device=cuda,
            **recipe.vantix_eval(),
        ),
    }
    if len(train["torchvision"]) != len(train["vantix"]):
        raise RuntimeError(
            f"steps per epoch differ: {len(train['torchvision'])} vs {len(train['vantix'])}"
        )

    torch.manual_seed(args.seed)
    base = spec.build(len(packed.classes), s.image_size)
    models = {"torchvision": base, "vantix": copy.deepcopy(base)}  # the same initial weights
    optimizers = {}
    for name, model in models.items():
        model.to(device)
        optimizers[name] = make_optimizer(model, args)

    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in LOADERS}
    for epoch in range(s.epochs + 1):
        order = LOADERS if epoch % 2 == 0 else LOADERS[::-1]
        for name in order:
            gc.collect()
            r = train_epoch(
                name, models[name], optimizers[name], train[name], device, epoch, s.image_size
            )
            runs[name].append(r)
            tag = "warm-up" if epoch == 0 else f"epoch {epoch}"
            print(
                f"  {tag:8s} {LABELS[name]:12s} {r['seconds']:7.2f} s  {plural(r['steps'], 'step')}"
                f"  loss {r['loss']:.3f}  train acc {r['accuracy']:6.1%}"
            )

    # Every trained model on both evaluation pipelines.
    preds: dict[tuple[str, str], torch.Tensor] = {}
    eval_seconds: dict[str, float] = {}
    val_labels = torch.as_tensor(packed.targets)[torch.as_tensor(val_idx)]
    for trained in LOADERS:
        for fed in LOADERS:
            p, y, seconds = evaluate(models[trained], evals[fed], device)
            if not torch.equal(y, val_labels):  # every validation sample once, in index order
                raise RuntimeError(f"{fed}: the evaluation pass is not the validation split")
            preds[trained, fed] = p
            eval_seconds.setdefault(fed, seconds)
    accuracy = {k: (p == val_labels).double().mean().item() for k, p in preds.items()}
    agreement = {
        trained: (preds[trained, "torchvision"] == preds[trained, "vantix"]).double().mean().item()
        for trained in LOADERS
    }

    loaders = {name: summarise(runs[name]) for name in LOADERS}
    for name in LOADERS:
        other = LOADERS[1 - LOADERS.index(name)]
        loaders[name].update(
            val_accuracy=accuracy[name, name],
            val_accuracy_other_pipeline=accuracy[name, other],
            eval_seconds=eval_seconds[name],
        )
    loaders["torchvision"].update(
        num_workers=os.cpu_count(), pin_memory=True, persistent_workers=args.persistent_workers
    )
    tv, vx = (loaders[n]["mean_epoch_seconds"] for n in LOADERS)
    acc_tv, acc_vx = (loaders[n]["val_accuracy"] for n in LOADERS)
    p = (acc_tv + acc_vx) / 2
    n_val = len(val_idx)
    n_params = sum(t.numel() for t in base.parameters())
    return {
        "model": {"name": spec.name, "parameters": n_params},
        "settings": {
            "profile": s.profile,
            "num_images": data["json"]["num_images"],
            "image_size": s.image_size,
            "batch_size": s.batch_size,
            "epochs": s.epochs,
            "warmup_epochs": 1,
        },
        "dataset": data["json"],
        "split": {
            "train": len(train_idx),
            "val": n_val,
            "val_fraction": args.val_fraction,
            "stratified": True,
            "seed": args.seed,
        },
        "recipe": recipe.describe(),
        "loaders": loaders,
        "time_saved_per_epoch_s": tv - vx,
        "speedup": tv / vx,
        "accuracy_difference": acc_vx - acc_tv,
        "accuracy_3se": 3 * math.sqrt(max(p * (1 - p), 1e-12) * 2 / n_val),
        "eval_prediction_agreement": agreement,
    }


# ==============================================================================================
# Report
# ==============================================================================================


def plot(
    name: str, result: dict[str, Any], machine: dict[str, Any], device: str, out: Path
) -> None:
    """Bars of seconds per epoch (mean ± std over the timed epochs) for both loaders."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    loaders, s = result["loaders"], result["settings"]
    means = [loaders[n]["mean_epoch_seconds"] for n in LOADERS]
    stds = [loaders[n]["std_epoch_seconds"] for n in LOADERS]
    fig, ax = plt.subplots(figsize=(6.4, 4.6), dpi=100)
    workers = loaders["torchvision"]["num_workers"]
    labels = [f"DataLoader\n(ImageFolder, {workers} workers)", "VantixLoader\n(packed, in Rust)"]
    bars = ax.bar(labels, means, yerr=stds, capsize=6, width=0.55, color=["#9a9a9a", "#2b7bba"])
    for bar, mean in zip(bars, means):
        ax.annotate(
            f"{mean:.2f} s",
            (bar.get_x() + bar.get_width() / 2, mean),
            xytext=(0, 4),
            textcoords="offset points",
            ha="center",
            va="bottom",
            fontsize=9,
        )
    ax.set_ylim(0, max(m + e for m, e in zip(means, stds)) * 1.25)
    ax.set_ylabel("training time per epoch (seconds)")
    ax.set_xlabel("data loader (same model, optimizer, steps and augmentation)")
    acc = [loaders[n]["val_accuracy"] for n in LOADERS]
    ax.set_title(
        f"{name}: {result['speedup']:.2f}x faster per epoch,"
        f" {result['time_saved_per_epoch_s']:.2f} s saved\n"
        f"validation accuracy: DataLoader {acc[0]:.1%}, VantixLoader {acc[1]:.1%}",
        fontsize=10,
    )
    ax.grid(axis="y", alpha=0.3)
    caption = (
        f"{machine['cpu_model']}, {machine['cpu_count']} cores; training on {device}."
        f" {s['profile']}: {result['split']['train']} training images at"
        f" {s['image_size']}x{s['image_size']} px, batch {s['batch_size']},"
        f" {plural(loaders['vantix']['steps_per_epoch'], 'step')} per epoch; mean ± std of"
        f" {plural(s['epochs'], 'epoch')} after 1 warm-up. {datetime.date.today().isoformat()}"
    )
    fig.text(0.5, 0.01, textwrap.fill(caption, 105), ha="center", va="bottom", fontsize=7)
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    print(f"wrote {out} ({out.stat().st_size / 1e3:.0f} KB)")


def print_table(report: dict[str, Any]) -> None:
    print(
        f"\n{'model':18s} {'DataLoader s/ep':>16s} {'Vantix s/ep':>14s} {'saved s':>8s}"
        f" {'speed-up':>8s} {'val acc DL':>10s} {'val acc VX':>10s}"
    )
    for name, r in report["models"].items():
        tv, vx = (r["loaders"][n] for n in LOADERS)
        print(
            f"{name:18s} {tv['mean_epoch_seconds']:9.2f} ± {tv['std_epoch_seconds']:4.2f}"
            f" {vx['mean_epoch_seconds']:7.2f} ± {vx['std_epoch_seconds']:4.2f}"
            f" {r['time_saved_per_epoch_s']:8.2f} {r['speedup']:7.2f}x"
            f" {tv['val_accuracy']:10.1%} {vx['val_accuracy']:10.1%}"
        )
        if abs(r["accuracy_difference"]) > r["accuracy_3se"]:
            print(
                f"  note: accuracies differ by {r['accuracy_difference']:+.1%}, more than"
                f" 3 standard errors ({r['accuracy_3se']:.1%}) of {r['split']['val']} images"
            )


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--models", nargs="+", choices=list(MODELS), default=list(MODELS), metavar="MODEL",
        help=f"models to train (default all: {' '.join(MODELS)})",
    )  # fmt: skip
    parser.add_argument(
        "--profile",
        choices=list(prepare_data.PROFILES),
        default=None,
        help="dataset profile for every model (default: cifar-like for the MLP and CNN,"
        " imagenet-std for MobileNetV3)",
    )
    parser.add_argument("--num-images", type=int, default=None, help="images (train + val)")
    parser.add_argument("--epochs", type=int, default=None, help="timed epochs, after 1 warm-up")
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--image-size", type=int, default=None, help="side S the model sees")
    parser.add_argument(
        "--pack-size", type=int, default=None,
        help="side P of the packed records (default: S for cifar-like, round(S*256/224) else)",
    )  # fmt: skip
    parser.add_argument("--val-fraction", type=float, default=0.2, help="held-out share")
    parser.add_argument("--optimizer", choices=("adamw", "sgd"), default="adamw")
    parser.add_argument(
        "--lr", type=float, default=None, help="learning rate (AdamW 1e-3, SGD 0.05)"
    )
    parser.add_argument("--weight-decay", type=float, default=None, help="(AdamW 0.05, SGD 5e-4)")
    parser.add_argument("--seed", type=int, default=0, help="init, shuffle, split, augmentation")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument(
        "--persistent-workers", action="store_true",
        help="keep the DataLoader's workers between epochs (default: as DataLoader, not)",
    )  # fmt: skip
    parser.add_argument(
        "--cifar-root", type=Path, default=None,
        help="a torchvision CIFAR-10 root: real images for cifar-like (never downloaded)",
    )  # fmt: skip
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, 1 timed epoch (CI)")
    add_output_options(parser, "training")
    parser.add_argument(
        "--assets-dir", type=Path, default=REPO / "assets", help="where the charts go"
    )
    args = parser.parse_args(argv)
    check_at_least_one(
        parser, args, ("num_images", "epochs", "batch_size", "image_size", "pack_size")
    )
    if not 0.0 < args.val_fraction < 1.0:
        parser.error("--val-fraction must be between 0 and 1")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: CUDA is not available")
    if args.lr is None:
        args.lr = 1e-3 if args.optimizer == "adamw" else 0.05
    if args.weight_decay is None:
        args.weight_decay = 0.05 if args.optimizer == "adamw" else 5e-4
    args.models = list(dict.fromkeys(args.models))
    return args


def main(argv: Optional[Sequence[str]] = None) -> dict[str, Any]:
    args = parse_args(argv)
    # pin_memory=True is the baseline as specified; without a GPU torch warns that it does nothing.
    warnings.filterwarnings("ignore", message=".*pin_memory.*")
    machine = report_machine()
    auto = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(auto if args.device == "auto" else args.device)
    print(f"device: {device}" + (f" ({machine['cuda']})" if device.type == "cuda" else ""))
    report: dict[str, Any] = {
        **report_head("training", machine),
        "parameters": {
            "models": args.models,
            "device": str(device),
            "optimizer": args.optimizer,
            "lr": args.lr,
            "weight_decay": args.weight_decay,
            "momentum": 0.9 if args.optimizer == "sgd" else None,
            "val_fraction": args.val_fraction,
            "seed": args.seed,
            "warmup_epochs": 1,
            "num_workers": os.cpu_count(),
            "pin_memory": True,
            "persistent_workers": args.persistent_workers,
            "timed": "from creating the epoch's iterator to the end of its last optimizer step",
            "command": command(argv),
        },
        "models": {},
    }
    for name in args.models:
        result = run_model(MODELS[name], args, device)
        chart = args.assets_dir / f"time_savings_{name}.png"
        plot(name, result, machine, str(device), chart)
        result["chart"] = rel(chart)
        report["models"][name] = result
    print_table(report)
    write_report(args.out, report)
    return report


if __name__ == "__main__":
    main()
