"""What more than one method uses: parameter selection, re-initialisation specs, the gradient
projection of Scissorhands, the one repair loop every fine-tuning method runs, and the SGD
knobs and fine-tuning step of the baselines."""
from __future__ import annotations

import copy
import math
import re
from collections import defaultdict
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Iterable

import torch
import torch.nn.functional as F
from torch import nn

import kernels
from orchestrator.errors import UserError, need_field, need_positive_ints, need_sgd
from orchestrator.methods import Method
from orchestrator.training import augment, batches, check_finite


def matching(model: nn.Module, patterns: tuple[str, ...],
             flag: str = "layer pattern") -> list[tuple[str, nn.Parameter]]:
    """The parameters whose names match any regex; a regex matching none is an error (``flag`` names it)."""
    named = list(model.named_parameters())
    regex = []
    for pattern in patterns:
        try:
            regex.append(re.compile(pattern))
        except re.error as exc:
            raise UserError(f"{flag} {pattern!r}: not a regular expression ({exc})") from None
        if not any(regex[-1].search(n) for n, _ in named):
            names = [n for n, _ in named]
            raise UserError(f"{flag} {pattern!r} matches no parameter of the model; its parameters: "
                            f"{', '.join(names[:6])}{f' ... ({len(names)} in all)' if len(names) > 6 else ''}")
    return [(n, p) for n, p in named if any(r.search(n) for r in regex)]


NORM_RULES = ("by_name", "by_type")


def init_specs(model: nn.Module, trim_names: set[str], init: str,
               norm_rule: str = "by_type") -> list[kernels.InitSpec | None]:
    """Per parameter (model order): None if not trimmable, else its fresh-value distribution.

    ``by_type``: only conv / linear parameters are trimmable (every normalisation layer is
    skipped). ``by_name``: the Scissorhands reference's rule, every parameter whose name lacks
    'bn' (so a BatchNorm inside a shortcut / downsample branch is trimmed); it draws 1-d weights
    as its ``re_init_weights`` does, kaiming_uniform(a=sqrt(5)) of an (n, 1) tensor: U(-1, 1).
    kaiming_uniform(a=sqrt(5)) has bound 1/sqrt(fan_in); biases start at zero.
    """
    specs: dict[str, kernels.InitSpec | None] = {}
    by_type = norm_rule == "by_type"
    for mod_name, module in model.named_modules():
        if by_type and not isinstance(module, (nn.Conv2d, nn.Linear)):
            continue
        for pname, p in module.named_parameters(recurse=False):
            full = f"{mod_name}.{pname}" if mod_name else pname
            if full not in trim_names or (not by_type and "bn" in full):
                continue
            if init == "zeros" or pname == "bias":
                specs[full] = kernels.InitSpec(0.0, 0.0)
            else:
                bound = 1.0 / math.sqrt(p[0].numel())  # 1-d: fan_in 1, U(-1, 1)
                specs[full] = kernels.InitSpec(-bound, bound)
    return [specs.get(n) for n, _ in model.named_parameters()]


MEMORY_MODES = ("columns", "sum")


class GradientProjection:
    """GEM projection of the repair gradient of the named parameters against the memory of
    r = grad(-L_f), taken from a frozen copy of the model at the start of every epoch.

    ``memory_mode="columns"`` (the reference): one memory vector per memory batch, column j the
    sum of the first j batches' r (the reference never zeroes the copy's gradients between
    them), one GEM constraint each; ``"sum"``: only the last column, one constraint. With one
    memory batch both are the closed form."""

    def __init__(self, model: nn.Module, names: list[str], *, strength: float, eps: float, scope: str,
                 every: int, backend: str | None, memory_mode: str):
        named = dict(model.named_parameters())
        self.model, self.names, self.params = model, names, [named[n] for n in names]
        self.strength, self.eps, self.scope, self.every, self.backend = strength, eps, scope, every, backend
        self.memory_mode = memory_mode
        self.columns: list[list[torch.Tensor]] = []

    def remember(self, forget_grads: Callable[[nn.Module, list[nn.Parameter]], list], batches: int,
                 train_mode: bool) -> None:
        """The cumulative sums over ``batches`` of -dL_f/dtheta on a frozen copy (``forget_grads(copy, params)``)."""
        frozen = copy.deepcopy(self.model).train(train_mode)
        named = dict(frozen.named_parameters())
        params = [named[n].requires_grad_(True) for n in self.names]
        memory = [torch.zeros_like(p) for p in params]
        columns = []
        for _ in range(batches):
            grads = forget_grads(frozen, params)
            torch._foreach_add_(memory, [-g if g is not None else torch.zeros_like(m) for g, m in zip(grads, memory)])
            if self.memory_mode == "columns":
                columns.append([m.clone() for m in memory])
        self.columns = columns if self.memory_mode == "columns" else [memory]

    def __call__(self, step: int) -> dict[str, float]:
        """Project the gradients in place (every ``every`` steps); returns whether it fired."""
        if step % self.every:
            return {"projection_rate": 0.0}
        for p in self.params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        coef = kernels.project_columns_([p.grad for p in self.params], self.columns, self.strength, self.eps,
                                        self.scope, backend=self.backend)
        return {"projection_rate": float(bool((coef != 0).any()))}


def repair_loop(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    *,
    epochs: int,
    steps: Callable[[int], Iterable[Any]],
    loss: Callable[[Any], tuple[torch.Tensor, dict[str, float]]],
    before_step: Callable[[int, Any], dict[str, float]] | None = None,
    after_step: Callable[[torch.optim.Optimizer], None] | None = None,
    start_epoch: Callable[[int], None] | None = None,
    on_epoch: Callable[[dict], None] | None = None,
    train_mode: bool = True,
    where: str,
    hint: str,
) -> list[dict]:
    """``epochs`` passes over ``steps(epoch)``: loss, finiteness check, backward, the method's
    ``before_step`` hook (e.g. a projection), optimizer step, ``after_step``. Each epoch's record
    holds the mean of every statistic the loss and the hook return; ``on_epoch`` gets it (and may
    raise). ``train_mode`` False keeps BatchNorm on its running statistics (e.g. NegGrad+)."""
    history = []
    for epoch in range(epochs):
        if start_epoch:
            start_epoch(epoch)
        model.train(train_mode)
        sums: dict[str, float] = defaultdict(float)
        n = 0
        for step, batch in enumerate(steps(epoch)):
            value, stats = loss(batch)
            check_finite(value, f"in {where} epoch {epoch} step {step}", hint)
            optimizer.zero_grad(set_to_none=True)
            value.backward()
            if before_step:
                stats = {**stats, **before_step(step, batch)}
            optimizer.step()
            if after_step:
                after_step(optimizer)
            for key, v in stats.items():
                sums[key] += v
            n += 1
        record = {"epoch": epoch, **{k: v / max(1, n) for k, v in sums.items()}}
        history.append(record)
        if on_epoch:
            on_epoch(dict(record))
    model.eval()
    return history


@dataclass(frozen=True)
class SGDKnobs:
    """The knobs of every SGD fine-tuning baseline; each method overrides the defaults with its
    published ones (each method file cites them)."""

    epochs: int = 10
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    batch_size: int = 256

    def validate(self) -> None:
        need_field(self.epochs >= 0, self, "epochs", "must be >= 0")
        need_sgd(self)
        need_positive_ints(self, ("batch_size",))


def sgd(model: nn.Module, cfg: SGDKnobs) -> torch.optim.SGD:
    return torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)


def cross_entropy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, natural: bool,
                  generator: torch.Generator) -> tuple[torch.Tensor, float]:
    """Loss on an augmented batch (the reference codes train with their training transforms),
    and the batch accuracy in percent."""
    logits = model(augment(x, natural, generator))
    return F.cross_entropy(logits, y), 100.0 * float((logits.argmax(1) == y).float().mean())


def fine_tune(model: nn.Module, epoch_data: Callable[[int], tuple[torch.Tensor, torch.Tensor]], cfg: SGDKnobs,
              generator: torch.Generator, *, natural: bool, on: str = "retain", sign: float = 1.0,
              penalty: Callable[[int], torch.Tensor | float] | None = None,
              before_step: Callable[[int, Any], dict[str, float]] | None = None,
              after_step: Callable[[torch.optim.Optimizer], None] | None = None,
              on_epoch: Callable[[dict], None] | None = None, where: str) -> list[dict]:
    """SGD over shuffled batches of ``epoch_data(epoch)`` = (x, y) on ``sign`` * cross-entropy
    (+ ``penalty(epoch)``): what FT, GA, RL, l1-sparse and SalUn share. ``on`` names the set in
    the epoch statistics; ``after_step(optimizer)`` runs after every optimizer step."""
    state = {"epoch": 0}

    def steps(epoch: int):
        state["epoch"] = epoch
        x, y = epoch_data(epoch)
        return batches(x, y, cfg.batch_size, generator)

    def loss(batch):
        value, acc = cross_entropy(model, batch[0], batch[1], natural, generator)
        stats = {f"loss_{on}": value.item(), f"train_acc_{on}": acc}
        total = sign * value
        if penalty is not None:
            total = total + penalty(state["epoch"])
        return total, stats

    return repair_loop(model, sgd(model, cfg), epochs=cfg.epochs, steps=steps, loss=loss, before_step=before_step,
                       after_step=after_step,
                       on_epoch=on_epoch, where=where, hint=f"lower --lr (now {cfg.lr})")


class OneSetFineTuning(Method):
    """SGD on the cross-entropy of one set: FT (D_r), GA (D_f, ascending), l1-sparse (D_r plus
    the ``penalty``)."""

    tasks = ("classification",)
    on: ClassVar[str] = "retain"  # retain | forget
    sign: ClassVar[float] = 1.0

    def penalty(self, model: nn.Module, cfg: Any) -> Callable[[int], torch.Tensor | float] | None:
        return None

    def unlearn(self, model, data, cfg, generator, *, on_epoch, backend, shared):
        x, y = (data.x_retain, data.y_retain) if self.on == "retain" else (data.x_forget, data.y_forget)
        history = fine_tune(model, lambda epoch: (x, y), cfg, generator, natural=data.dataset.natural_images, on=self.on,
                            sign=self.sign, penalty=self.penalty(model, cfg), on_epoch=on_epoch, where=self.name)
        return history, {}
