"""SCRUB (Kurmanji et al., "Towards Unbounded Machine Unlearning", NeurIPS 2023), as its code
(meghdadk/SCRUB, ``thirdparty/repdistiller/helper/loops.py`` ``train_distill`` and
``MIA_experiments.ipynb``) runs it: the student starts as the original and learns from the
frozen original (the teacher, eval mode) while it trains (train mode).

Epoch e (1-based): if e <= ``max_epochs``, a max pass over D_f minimising -KL(teacher || student);
then a min pass over D_r minimising ``ce_weight`` * CE + ``kl_weight`` * KL(teacher || student).
KL is repdistiller's DistillKL: temperature ``temperature``, scaled by T^2, summed over classes,
averaged over the batch. One SGD optimizer for both passes; lr x ``lr_decay_rate`` per passed
milestone (lr_decay_epochs). Batches augmented as every fine-tuning method here.

Defaults: the paper's CIFAR-10 ResNet-18 setting (``MIA_experiments.ipynb``): 5 epochs, 3 with a
max pass, lr 5e-4 (SGD, momentum 0.9, weight decay 5e-4), milestones 3, 5, 9 (x 0.1), T 4,
ce_weight (gamma) 1, kl_weight (alpha) 0.5, batches of 32 (D_r) and 16 (D_f). The code at the
paper's time also added ``smoothing`` x sum of ||theta - theta_orig||_F; its current code does not,
nor does this. The rewinding variant (SCRUB+R) needs validation data of the forgotten class and
is not implemented.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from orchestrator.errors import need_field, need_positive_ints, need_sgd
from orchestrator.methods import Method
from orchestrator.methods.shared import repair_loop
from orchestrator.training import augment, batches


@dataclass(frozen=True)
class ScrubConfig:
    epochs: int = 5
    max_epochs: int = 3  # msteps: the first epochs that also run the max pass over D_f
    lr: float = 5e-4
    momentum: float = 0.9
    weight_decay: float = 5e-4
    lr_decay_epochs: tuple[int, ...] = (3, 5, 9)
    lr_decay_rate: float = 0.1
    temperature: float = 4.0  # kd_T
    ce_weight: float = 1.0  # gamma
    kl_weight: float = 0.5  # alpha
    batch_size: int = 32  # D_r
    forget_batch_size: int = 16

    HELP = {
        "max_epochs": "the first epochs that start with a max pass over D_f (msteps)",
        "lr_decay_epochs": "lr x lr_decay_rate after each of these epochs",
        "temperature": "distillation temperature T (kd_T)",
        "ce_weight": "weight of the retain cross-entropy in the min pass (gamma)",
        "kl_weight": "weight of KL(teacher || student) in the min pass (alpha)",
        "batch_size": "retain batch size",
        "forget_batch_size": "forget batch size of the max pass",
    }

    def validate(self) -> None:
        need_field(self.epochs >= 0, self, "epochs", "must be >= 0")
        need_field(self.max_epochs >= 0, self, "max_epochs", "must be >= 0")
        need_sgd(self)
        need_field(0 < self.lr_decay_rate <= 1, self, "lr_decay_rate", "must be in (0, 1]")
        need_field(all(int(e) == e and e >= 0 for e in self.lr_decay_epochs), self, "lr_decay_epochs",
                   "must be epochs >= 0")
        need_field(self.temperature > 0, self, "temperature", "must be > 0")
        need_field(self.ce_weight >= 0, self, "ce_weight", "must be >= 0")
        need_field(self.kl_weight >= 0, self, "kl_weight", "must be >= 0")
        need_positive_ints(self, ("batch_size", "forget_batch_size"))


def distill_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """repdistiller's DistillKL: KL(teacher || student) at temperature T, x T^2, batch mean."""
    log_p = F.log_softmax(student_logits / temperature, dim=1)
    q = F.softmax(teacher_logits / temperature, dim=1)
    return F.kl_div(log_p, q, reduction="sum") * temperature**2 / student_logits.shape[0]


class Scrub(Method):
    name = "scrub"
    tasks = ("classification",)
    config_class = ScrubConfig

    def unlearn(self, model, data, cfg, generator, *, on_epoch, backend, shared):
        natural = data.dataset.natural_images
        teacher = copy.deepcopy(model).eval().requires_grad_(False)
        optimizer = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum,
                                    weight_decay=cfg.weight_decay)

        def start_epoch(epoch: int) -> None:
            passed = sum(epoch + 1 > d for d in cfg.lr_decay_epochs)
            for group in optimizer.param_groups:
                group["lr"] = cfg.lr * cfg.lr_decay_rate**passed

        def steps(epoch: int):
            if epoch + 1 <= cfg.max_epochs:
                for xb, yb in batches(data.x_forget, data.y_forget, cfg.forget_batch_size, generator):
                    yield "max", xb, yb
            for xb, yb in batches(data.x_retain, data.y_retain, cfg.batch_size, generator):
                yield "min", xb, yb

        def loss(batch):
            kind, xb, yb = batch
            x = augment(xb, natural, generator)
            logits = model(x)
            with torch.no_grad():
                teacher_logits = teacher(x)
            kl = distill_kl(logits, teacher_logits, cfg.temperature)
            if kind == "max":
                return -kl, {"kl_forget": kl.item()}
            ce = F.cross_entropy(logits, yb)
            return cfg.ce_weight * ce + cfg.kl_weight * kl, {"loss_retain": ce.item(), "kl_retain": kl.item()}

        history = repair_loop(model, optimizer, epochs=cfg.epochs, steps=steps, loss=loss, start_epoch=start_epoch,
                              on_epoch=on_epoch, where="SCRUB", hint=f"lower --lr (now {cfg.lr})")
        return history, {}


METHOD = Scrub()
