"""Unlearning metrics (all in percent): UA, RA, TA, MIA-Efficacy and Avg. Gap, as the
Scissorhands and SalUn papers define them."""
from __future__ import annotations

import numpy as np
import torch
from sklearn.svm import SVC
from torch import nn

from orchestrator.forget import UnlearnData
from orchestrator.training import predict_proba

CORE_METRICS = ("UA", "RA", "TA", "MIA")
MIA_VARIANTS = ("confidence", "correctness", "entropy", "m_entropy", "prob")


def top1_accuracy(probs: torch.Tensor, y: torch.Tensor) -> float:
    return 100.0 * float((probs.argmax(1) == y).float().mean()) if len(y) else float("nan")


def mia_features(probs: np.ndarray, labels: np.ndarray, variant: str) -> np.ndarray:
    """Per-sample attack features from softmax outputs."""
    n = len(labels)
    p_true = probs[np.arange(n), labels]
    log = lambda a: np.log(np.clip(a, 1e-30, None))  # noqa: E731
    if variant == "confidence":
        return p_true[:, None]
    if variant == "correctness":
        return (probs.argmax(1) == labels).astype(np.float64)[:, None]
    if variant == "entropy":
        return (-(probs * log(probs)).sum(1))[:, None]
    if variant == "m_entropy":  # Song & Mittal's modified entropy, which uses the true label
        others = probs.copy()
        others[np.arange(n), labels] = 0.0
        term_true = -(1 - p_true) * log(p_true)
        term_rest = -(others * log(1 - others)).sum(1)
        return (term_true + term_rest)[:, None]
    if variant == "prob":
        return probs
    raise ValueError(f"MIA variant {variant!r}: allowed {', '.join(MIA_VARIANTS)}")


def mia_efficacy(
    member_feats: np.ndarray, nonmember_feats: np.ndarray, target_feats: np.ndarray
) -> float:
    """Train an RBF SVM (C=3, gamma='auto') members=1 / non-members=0; return
    100 * (1 - mean prediction on the target set) = share called non-member.
    NaN (undefined) when the attack feature is constant: such an attack cannot tell anything
    about the forget set, so any number would be made up."""
    x = np.concatenate([member_feats, nonmember_feats])
    y = np.concatenate([np.ones(len(member_feats)), np.zeros(len(nonmember_feats))])
    if len(np.unique(x, axis=0)) == 1:
        return float("nan")
    clf = SVC(C=3, gamma="auto", kernel="rbf")
    clf.fit(x, y)
    return 100.0 * (1.0 - float(clf.predict(target_feats).mean()))


def evaluate(model: nn.Module, data: UnlearnData) -> dict[str, float]:
    """UA, RA, TA, MIA (confidence SVM) plus the other MIA feature variants as MIA_<variant>."""
    x_test, y_test = data.test_set()
    p_forget = predict_proba(model, data.x_forget)
    p_retain = predict_proba(model, data.x_retain)
    p_test = predict_proba(model, x_test)
    metrics = {
        "UA": 100.0 - top1_accuracy(p_forget, data.y_forget),
        "RA": top1_accuracy(p_retain, data.y_retain),
        "TA": top1_accuracy(p_test, y_test),
    }
    n_members = min(len(y_test), len(data.y_retain))
    members = (p_retain[:n_members].numpy(), data.y_retain[:n_members].numpy())
    nonmembers = (p_test.numpy(), y_test.numpy())
    target = (p_forget.numpy(), data.y_forget.numpy())
    for variant in MIA_VARIANTS:
        value = mia_efficacy(*(mia_features(p, y, variant) for p, y in (members, nonmembers, target)))
        metrics["MIA" if variant == "confidence" else f"MIA_{variant}"] = value
    return metrics


def avg_gap(metrics: dict[str, float], retrain: dict[str, float]) -> float:
    """Mean absolute difference to the retrain model over UA, RA, TA, MIA."""
    return float(np.mean([abs(metrics[k] - retrain[k]) for k in CORE_METRICS]))
