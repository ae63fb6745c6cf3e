"""The class-conditional generator (diffusers UNet2DModel) and UNet module selection.

Label ``num_classes`` is the null label used for classifier-free guidance, so the class
embedding table has ``num_classes + 1`` rows. Attention sits at every level but the
first (highest-resolution) one, so the two lowest-resolution up-blocks hold the
self-attention layers that the reference trims ("attn1_up").
"""
from __future__ import annotations

import re
from typing import TYPE_CHECKING

from torch import nn

from orchestrator.errors import UserError

if TYPE_CHECKING:
    from orchestrator.tasks.class_erasure.config import GeneratorRecipe

TRIM_PRESETS = ("attn1_up", "attn2", "attn", "all")


def build_class_unet(recipe: GeneratorRecipe, image_size: int, channels: int, num_classes: int) -> nn.Module:
    from diffusers import UNet2DModel

    levels = len(recipe.widths)
    return UNet2DModel(
        sample_size=image_size,
        in_channels=channels,
        out_channels=channels,
        block_out_channels=tuple(recipe.widths),
        layers_per_block=recipe.layers_per_block,
        down_block_types=("DownBlock2D",) + ("AttnDownBlock2D",) * (levels - 1),
        up_block_types=("AttnUpBlock2D",) * (levels - 1) + ("UpBlock2D",),
        num_class_embeds=num_classes + 1,
        norm_num_groups=recipe.norm_groups,
        attention_head_dim=recipe.attention_head_dim,
    )


def _last_up_attention(names: list[str]) -> dict[int, int]:
    """Up-block index -> index of its last attention module (only blocks that have one)."""
    last: dict[int, int] = {}
    for n in names:
        m = re.match(r"^up_blocks\.(\d+)\.attentions\.(\d+)\.", n)
        if m:
            block, index = int(m.group(1)), int(m.group(2))
            last[block] = max(index, last.get(block, 0))
    return last


def preset_patterns(preset: str, names: list[str]) -> list[str]:
    """Regexes on parameter names for one preset.

    attn1_up: the reference's diffusion default: self-attention of ``attentions.1`` (the
      second attention module) of the first two up-blocks that contain attention; in SD
      v1 these are up_blocks 1 and 2 (CompVis output_blocks 4 and 7). An up-block with a
      single attention module falls back to that one (``attentions.0``). In a
      UNet2DConditionModel only the ``attn1`` layers (not attn2, norms or feed-forward);
      UNet2DModel's attention modules are self-attention: their to_q/k/v/out layers.
    attn2:   every cross-attention layer (an earlier version of the reference).
    attn:    every attention layer (self and cross) anywhere in the UNet.
    all:     every parameter (only conv / linear entries are re-initialised).
    """
    cross = any(".attn2." in n for n in names)
    if preset == "attn1_up":
        last = _last_up_attention(names)
        inner = r"\..*\.attn1\." if cross else r"\.(to_q|to_k|to_v|to_out)"
        return [rf"^up_blocks\.{b}\.attentions\.{min(1, last[b])}{inner}" for b in sorted(last)[:2]]
    if preset == "attn2":
        return [r"\.attn2\."]
    if preset == "attn":
        return [r"\.attn[12]\.", r"\.attentions\.\d+\.(to_q|to_k|to_v|to_out)"]
    if preset == "all":
        return [r".*"]
    raise ValueError(preset)


def select_parameters(unet: nn.Module, modules: tuple[str, ...]) -> list[str]:
    """Names of the parameters that the presets / regexes in ``modules`` select (model order)."""
    names = [n for n, _ in unet.named_parameters()]
    patterns: list[str] = []
    for item in modules:
        patterns += preset_patterns(item, names) if item in TRIM_PRESETS else [item]
    regex = [re.compile(p) for p in patterns]
    chosen = [n for n in names if any(r.search(n) for r in regex)]
    if not chosen:
        sample = ", ".join(names[:: max(1, len(names) // 8)][:8])
        raise UserError(
            f"--trim-modules {' '.join(modules)}: selects no parameter of this UNet; allowed presets "
            f"{', '.join(TRIM_PRESETS)} or regexes on names such as {sample}"
        )
    return chosen
