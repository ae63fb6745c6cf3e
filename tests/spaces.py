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
fixed: {{epochs: {epochs}}}
search:
  trim_ratio: {trim}
  lr: {lr}
objectives:
{objectives}
trials: {trials}
seeds: {seeds}
resources: {{cpu: 1}}
max_concurrent: {concurrent}
{extra}"""

OBJECTIVES = (("gap_UA", "min"), ("RA", "max"), ("RTE_s", "min"))


MACHINERY = "width: 4\nrecipe: {epochs: 1}"
# Where the pick test draws: two repair epochs and the ranges in which every point forgets the
# class and repairs the rest (a 5% cut at lr 0.002 left the model worse than doing nothing).
PICK = {"model": TINY_YAML, "epochs": 2, "trim": "{type: loguniform, low: 0.005, high: 0.02}",
        "lr": "{type: loguniform, low: 0.005, high: 0.02}"}


def tiny_space(name: str = "tiny", trials: int = 4, concurrent: int = 2, seeds: str = "[0]",
               lr: str = "{type: loguniform, low: 0.002, high: 0.02}", objectives=OBJECTIVES,
               model: str = MACHINERY, epochs: int = 1,
               trim: str = "{type: loguniform, low: 0.005, high: 0.05}", extra: str = "") -> str:
    lines = "\n".join(f"  - {{metric: {m}, direction: {d}}}" for m, d in objectives)
    return TINY_SPACE.format(name=name, trials=trials, concurrent=concurrent, seeds=seeds, lr=lr, objectives=lines,
                             model=model, epochs=epochs, trim=trim, extra=extra)
