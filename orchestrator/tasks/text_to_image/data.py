"""Text-to-image data for the diffusion method: self-generated latents and prompt embeddings."""
from __future__ import annotations

import torch
from torch import nn

from orchestrator.training import cycle, shuffled


class PromptTask:
    """Concept erasure on a Stable Diffusion UNet2DConditionModel over self-generated latents.

    D_f: latents the original pipeline generated for the forget prompts (condition = their
    text embeddings); D_r: latents generated for the retain prompts. The anchor condition
    is the anchor prompt's embedding; ``forget_prompts`` holds each forget prompt's embedding
    once and ``emb_null`` the empty prompt's (what methods that sample with guidance need);
    ``retain_prompts`` each retain prompt's embedding once (None: the anchor's), the other
    concepts a forget sample may be relabelled as (SalUn).
    """

    def __init__(self, lat_forget, emb_forget, lat_retain, emb_retain, emb_anchor, abar, forget_prompts, emb_null,
                 retain_prompts=None):
        self.lat_forget, self.emb_forget = lat_forget, emb_forget
        self.lat_retain, self.emb_retain = lat_retain, emb_retain
        self.emb_anchor = emb_anchor  # [1, L, D]
        self.abar = abar.to(lat_forget.device)
        self.forget_prompts, self.emb_null = forget_prompts, emb_null  # [P, L, D], [1, L, D]
        self.retain_prompts = emb_anchor if retain_prompts is None else retain_prompts  # [R, L, D]

    def eps(self, unet: nn.Module, x_t, t, cond):
        return unet(x_t, t, encoder_hidden_states=cond).sample

    def _batches(self, lat, emb, batch_size, generator):
        def epoch():
            for idx in shuffled(len(lat), batch_size, generator):
                idx = idx.to(lat.device)
                yield lat[idx], emb[idx]

        return cycle(epoch)

    def forget_batches(self, batch_size, generator):
        return self._batches(self.lat_forget, self.emb_forget, batch_size, generator)

    def retain_batches(self, batch_size, generator):
        return self._batches(self.lat_retain, self.emb_retain, batch_size, generator)

    def anchor_cond(self, forget_cond, generator):
        return self.emb_anchor.expand(len(forget_cond), -1, -1)

    def pseudo_cond(self, forget_cond, generator):
        """Per forget row, the embedding of a random retain prompt (another concept)."""
        pick = torch.randint(len(self.retain_prompts), (len(forget_cond),), generator=generator)
        return self.retain_prompts[pick.to(self.retain_prompts.device)]
