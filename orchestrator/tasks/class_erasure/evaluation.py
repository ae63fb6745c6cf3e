"""Class-erasure metrics: a fixed classifier labels generated samples (as in the Scissorhands and
SalUn papers' class-wise diffusion experiments).

- forget_acc: % of forget-conditioned samples the classifier calls the forget class (want ~0)
- retained_acc: mean over retained classes of the % of class-c samples called c (want as before)
- fid: Frechet distance between the classifier's penultimate features of generated and of
  real retained-class images (training split); lower is better. A small-feature FID: only
  comparable between runs that use the same classifier.
Every model is sampled from the same fixed noise (``eval_seed``) with deterministic DDIM,
so original / retrain / unlearned are compared sample by sample.
"""
from __future__ import annotations


import numpy as np
import torch
from torch import nn

from orchestrator.diffusion.images import to_uint8
from orchestrator.diffusion.sampling import ddim_sample
from orchestrator.training import to_float

EVAL_CODE_VERSION = 1


def eval_noise(num_classes: int, per_class: int, shape: tuple[int, ...], seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Fixed starting noise and labels: sample j of class c is row c * per_class + j."""
    g = torch.Generator().manual_seed(seed)
    noise = torch.randn((num_classes * per_class, *shape), generator=g)
    labels = torch.arange(num_classes).repeat_interleave(per_class)
    return noise, labels


@torch.no_grad()
def generate(
    unet: nn.Module,
    noise: torch.Tensor,
    labels: torch.Tensor,
    null_label: int,
    abar: torch.Tensor,
    steps: int,
    guidance_scale: float,
    chunk: int = 256,
) -> torch.Tensor:
    """uint8 samples for the given labels, in chunks (the result does not depend on chunk)."""
    unet.eval()
    device = next(unet.parameters()).device
    eps = lambda x, t, c: unet(x, t, class_labels=c).sample  # noqa: E731
    out = []
    for i in range(0, len(labels), chunk):
        z, y = noise[i : i + chunk].to(device), labels[i : i + chunk].to(device)
        x0 = ddim_sample(eps, z, y, torch.full_like(y, null_label), abar, steps, guidance_scale)
        out.append(to_uint8(x0).cpu())
    return torch.cat(out)


@torch.no_grad()
def features(classifier: nn.Module, x: torch.Tensor, batch_size: int = 512) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits, penultimate features) of uint8 images: the project's ResNets say their features;
    any other classifier's are the input of its last linear layer."""
    classifier.eval()
    own = hasattr(classifier, "features") and hasattr(classifier, "fc")
    seen: list[torch.Tensor] = []
    hook = None if own else [m for m in classifier.modules() if isinstance(m, nn.Linear)][-1] \
        .register_forward_pre_hook(lambda _, args: seen.append(args[0].flatten(1)))
    logits, feats = [], []
    try:
        for i in range(0, len(x), batch_size):
            xb = to_float(x[i : i + batch_size])
            if own:
                feats.append(classifier.features(xb))
                logits.append(classifier.fc(feats[-1]))
            else:
                logits.append(classifier(xb))
                feats.append(seen.pop())
    finally:
        if hook is not None:
            hook.remove()
    return torch.cat(logits), torch.cat(feats)


def _psd_sqrt(s: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh((s + s.T) / 2)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 (S_a S_b)^(1/2)) of two feature sets.

    Tr((S_a S_b)^(1/2)) = sum of sqrt(eigenvalues of S_a^(1/2) S_b S_a^(1/2)), a symmetric PSD
    matrix: exact, stable for singular covariances, and independent of scipy's sqrtm API.
    """
    a, b = a.astype(np.float64), b.astype(np.float64)
    mu_a, mu_b = a.mean(0), b.mean(0)
    s_a, s_b = np.atleast_2d(np.cov(a, rowvar=False)), np.atleast_2d(np.cov(b, rowvar=False))
    root_a = _psd_sqrt(s_a)
    eig = np.linalg.eigvalsh(root_a @ s_b @ root_a)
    tr_covmean = float(np.sqrt(np.clip(eig, 0, None)).sum())
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(s_a) + np.trace(s_b) - 2.0 * tr_covmean)


def sample_metrics(
    classifier: nn.Module,
    samples: torch.Tensor,
    labels: torch.Tensor,
    forget_class: int,
    real_retained: torch.Tensor,
) -> dict:
    logits, feats = features(classifier, samples)
    pred = logits.argmax(1)
    per_class = {}
    for c in torch.unique(labels).tolist():
        sel = labels == c
        per_class[str(c)] = round(100.0 * float((pred[sel] == c).float().mean()), 4)
    retained = [v for k, v in per_class.items() if int(k) != forget_class]
    keep = labels != forget_class
    _, real_feats = features(classifier, real_retained)
    fid = frechet_distance(feats[keep].numpy(), real_feats.numpy())
    forget_pred = pred[labels == forget_class]
    return {
        "forget_acc": per_class[str(forget_class)],
        "retained_acc": round(float(np.mean(retained)), 4),
        "fid": round(fid, 4),
        "per_class_acc": per_class,
        # what the forget-conditioned samples turned into (class histogram, %)
        "forget_pred_hist": {str(c): round(100.0 * float((forget_pred == c).float().mean()), 2)
                             for c in torch.unique(forget_pred).tolist()},
    }
