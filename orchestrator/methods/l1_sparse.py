"""l1-sparse: fine-tune on D_r with an l1 penalty on all weights (Jia et al., "Model Sparsity
Can Simplify Machine Unlearning", NeurIPS 2023), the penalty decaying linearly to zero over the
first ``epochs - no_l1_epochs`` epochs, as their code does.

Defaults: alpha 1e-4, 10 epochs at lr 0.01 (SGD, momentum 0.9, weight decay 5e-4), from the
Scissorhands reference scripts' l1_sparse baseline; no_l1_epochs 0 (their default).
"""
from __future__ import annotations

from dataclasses import dataclass

from orchestrator.errors import need_field
from orchestrator.methods.shared import OneSetFineTuning, SGDKnobs


@dataclass(frozen=True)
class L1SparseConfig(SGDKnobs):
    epochs: int = 10
    lr: float = 0.01
    alpha: float = 1e-4  # l1 weight at epoch 0
    no_l1_epochs: int = 0  # final epochs without the penalty

    def validate(self) -> None:
        super().validate()
        need_field(self.alpha >= 0, self, "alpha", "must be >= 0")
        need_field(0 <= self.no_l1_epochs <= self.epochs, self, "no_l1_epochs",
                   f"must be in [0, {self.epochs}] (at most epochs)")


class L1Sparse(OneSetFineTuning):
    name = "l1_sparse"
    config_class = L1SparseConfig

    def penalty(self, model, cfg: L1SparseConfig):
        params = list(model.parameters())
        decay_epochs = cfg.epochs - cfg.no_l1_epochs

        def l1(epoch: int):
            if epoch >= decay_epochs:
                return 0.0
            return cfg.alpha * (1 - epoch / decay_epochs) * sum(p.abs().sum() for p in params)

        return l1


METHOD = L1Sparse()
