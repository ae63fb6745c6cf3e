"""The tiny search space the sweep and cluster tests run: about a minute on 2 CPUs (ResNet-8 at
width 4, one epoch everywhere: an original of ~30% accuracy, enough to test the machinery).
``PICK`` puts it on the tests' tiny recipe (a real original) where a pick's quality is judged."""
from __future__ import annotations

from tests.measured import TINY_YAML

TINY_SPACE = """\
name: {name}
dataset: mnist5k
model: resnet8
forget: class:3
{model}
fixed: {{epochs: 1}}
search:
  trim_ratio: {{type: loguniform, low: 0.005, high: 0.05}}
  lr: {lr}
objectives:
{objectives}
trials: {trials}
seeds: {seeds}
resources: {{cpu: 1}}
max_concurrent: {concurrent}
"""

OBJECTIVES = (("gap_UA", "min"), ("RA", "max"), ("RTE_s", "min"))


MACHINERY = "width: 4\nrecipe: {epochs: 1}"
PICK = {"model": TINY_YAML}


def tiny_space(name: str = "tiny", trials: int = 4, concurrent: int = 2, seeds: str = "[0]",
               lr: str = "{type: loguniform, low: 0.002, high: 0.02}", objectives=OBJECTIVES,
               model: str = MACHINERY) -> str:
    lines = "\n".join(f"  - {{metric: {m}, direction: {d}}}" for m, d in objectives)
    return TINY_SPACE.format(name=name, trials=trials, concurrent=concurrent, seeds=seeds, lr=lr, objectives=lines,
                             model=model)
