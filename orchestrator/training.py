"""Batching, augmentation, plain training and prediction: shared by references, methods, evaluation."""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from orchestrator.errors import DivergenceError, UserError, need_positive_ints, need_sgd


@dataclass(frozen=True)
class TrainRecipe:
    """How the original and retrain reference models are trained (same recipe for both)."""

    epochs: int = 12
    lr: float = 0.1
    batch_size: int = 128
    momentum: float = 0.9
    weight_decay: float = 5e-4
    augment: bool = True  # random shifts (and flips for natural images); off lets a model memorise

    def validate(self) -> None:
        need_positive_ints(self, ("epochs", "batch_size"))
        need_sgd(self)


def set_threads() -> int:
    """Torch threads = the CPUs this process holds (Ray exports OMP_NUM_THREADS per trial)."""
    n = int(os.environ.get("OMP_NUM_THREADS") or len(os.sched_getaffinity(0)))
    torch.set_num_threads(max(1, n))
    return n


def to_float(x: torch.Tensor) -> torch.Tensor:
    return x.float().div_(255.0)


def augment(x: torch.Tensor, natural: bool, generator: torch.Generator) -> torch.Tensor:
    """Random translation (pad + crop: 2 px for digits, 4 px for 32x32 natural images) and,
    for natural images, horizontal flips. Returns float images in [0, 1]."""
    x = to_float(x)
    pad = 4 if natural else 2
    n, _, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad))
    shifts = torch.randint(0, 2 * pad + 1, (n, 2), generator=generator).tolist()
    out = torch.stack([padded[i, :, dy : dy + h, dx : dx + w] for i, (dy, dx) in enumerate(shifts)])
    if natural:
        flip = torch.rand(n, generator=generator) < 0.5
        out = torch.where(flip.view(n, 1, 1, 1), out.flip(3), out)
    return out


def batches(
    x: torch.Tensor,
    y: torch.Tensor,
    batch_size: int,
    generator: torch.Generator | None,
    shuffle: bool = True,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    order = torch.randperm(len(y), generator=generator) if shuffle else torch.arange(len(y))
    for start in range(0, len(y), batch_size):
        idx = order[start : start + batch_size]
        yield x[idx], y[idx]


def shuffled(n: int, batch_size: int, generator: torch.Generator) -> Iterator[torch.Tensor]:
    """Index batches of one shuffled pass over n samples."""
    order = torch.randperm(n, generator=generator)
    for start in range(0, n, batch_size):
        yield order[start : start + batch_size]


def cycle(make_epoch: Callable[[], Iterator]) -> Iterator:
    """Endless batches: a new shuffled pass each time the previous one is exhausted."""
    while True:
        empty = True
        for item in make_epoch():
            empty = False
            yield item
        if empty:
            return


def resolve_device(name: str) -> torch.device:
    """auto | cpu | cuda; cuda without a visible device is a clear error."""
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda: no CUDA device is visible; allowed here: auto, cpu")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def check_finite(loss: torch.Tensor, where: str, hint: str) -> None:
    if not torch.isfinite(loss):
        raise DivergenceError(f"loss became {loss.item()} {where}; {hint}")


def train_classifier(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    epochs: int,
    lr: float,
    batch_size: int,
    momentum: float,
    weight_decay: float,
    natural: bool,
    generator: torch.Generator,
    augmentation: bool = True,
    desc: str = "train",
    progress: bool = True,
) -> list[dict]:
    """Nesterov SGD with a one-cycle schedule (``OneCycleLR``: the learning rate warms up to ``lr``
    over the first 15% of steps, then anneals along a cosine); returns per-epoch loss/accuracy."""
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay, nesterov=True)
    steps = epochs * math.ceil(len(y) / batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.15)
    history = []
    bar = tqdm(range(epochs), desc=desc, unit="epoch", disable=not progress, leave=False)
    for epoch in bar:
        model.train()
        total_loss, correct, seen = 0.0, 0, 0
        for xb, yb in batches(x, y, batch_size, generator):
            logits = model(augment(xb, natural, generator) if augmentation else to_float(xb))
            loss = F.cross_entropy(logits, yb)
            check_finite(loss, f"in {desc} epoch {epoch}", f"lower the training lr (now {lr})")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total_loss += loss.item() * len(yb)
            correct += int((logits.argmax(1) == yb).sum())
            seen += len(yb)
        history.append({"epoch": epoch, "loss": total_loss / seen, "train_acc": 100.0 * correct / seen})
        bar.set_postfix(loss=f"{total_loss / seen:.3f}", acc=f"{100.0 * correct / seen:.1f}")
    model.eval()
    return history


@torch.no_grad()
def predict_proba(model: nn.Module, x: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    """Softmax probabilities on uint8 images, eval mode."""
    model.eval()
    out = [F.softmax(model(to_float(x[i : i + batch_size])), dim=1) for i in range(0, len(x), batch_size)]
    return torch.cat(out) if out else torch.empty(0)


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    if len(y) == 0:
        return float("nan")
    return 100.0 * float((predict_proba(model, x).argmax(1) == y).float().mean())
