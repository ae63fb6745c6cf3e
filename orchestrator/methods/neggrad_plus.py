"""NegGrad+ (Kurmanji et al., NeurIPS 2023; the recommended simple baseline of the Deep Unlearn
benchmark, Cadet et al. 2024): descend on D_r and ascend on D_f at once,
loss = beta * CE(D_r batch) - (1 - beta) * CE(D_f batch), each retain batch paired with the
next forget batch (``zip(retain, cycle(forget))``: an epoch is one pass over D_r).

Defaults: Deep Unlearn's (xcadet/deepunlearn ``munl/unlearning/neggradplus.py``): beta (their
alpha) 0.95, 10 epochs at lr 0.01 (SGD, momentum 0.9, no weight decay), batches of 256, the model
in eval mode (BatchNorm on its running statistics) and no augmentation, as there.
``bn_mode: train`` and ``augment: true`` give the SCRUB repository's ``train_negrad`` loop instead.
"""
from __future__ import annotations

from dataclasses import dataclass
from itertools import cycle

import torch.nn.functional as F

from orchestrator.errors import need_field
from orchestrator.methods import Method
from orchestrator.methods.shared import SGDKnobs, repair_loop, sgd
from orchestrator.training import augment, batches, to_float

BN_MODES = ("eval", "train")


@dataclass(frozen=True)
class NegGradPlusConfig(SGDKnobs):
    epochs: int = 10
    lr: float = 0.01
    weight_decay: float = 0.0
    beta: float = 0.95  # weight of the retain loss; 1 - beta that of the forget ascent
    bn_mode: str = "eval"  # eval | train
    augment: bool = False

    HELP = {
        "beta": "loss = beta * CE(retain) - (1 - beta) * CE(forget)",
        "bn_mode": "BatchNorm while training: eval (running statistics, Deep Unlearn) or train",
        "augment": "augment the batches (Deep Unlearn: no)",
    }

    def validate(self) -> None:
        super().validate()
        need_field(0 <= self.beta <= 1, self, "beta", "must be in [0, 1]")
        need_field(self.bn_mode in BN_MODES, self, "bn_mode", f"allowed {', '.join(BN_MODES)}")


class NegGradPlus(Method):
    name = "neggrad_plus"
    tasks = ("classification",)
    config_class = NegGradPlusConfig

    def unlearn(self, model, data, cfg, generator, *, on_epoch, backend, shared):
        natural = data.dataset.natural_images

        def images(x):
            return augment(x, natural, generator) if cfg.augment else to_float(x)

        def steps(epoch: int):
            forget = list(batches(data.x_forget, data.y_forget, cfg.batch_size, generator))
            return zip(batches(data.x_retain, data.y_retain, cfg.batch_size, generator), cycle(forget))

        def loss(pair):
            (xr, yr), (xf, yf) = pair
            loss_r = F.cross_entropy(model(images(xr)), yr)
            loss_f = F.cross_entropy(model(images(xf)), yf)
            return cfg.beta * loss_r - (1 - cfg.beta) * loss_f, {"loss_retain": loss_r.item(),
                                                                  "loss_forget": loss_f.item()}

        history = repair_loop(model, sgd(model, cfg), epochs=cfg.epochs, steps=steps, loss=loss,
                              train_mode=cfg.bn_mode == "train", on_epoch=on_epoch, where="NegGrad+",
                              hint=f"lower --lr (now {cfg.lr})")
        return history, {}


METHOD = NegGradPlus()
