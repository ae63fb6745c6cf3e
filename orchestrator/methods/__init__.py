"""The method contract and its registry.

A method is one file holding its config dataclass (every knob with its default; ``validate()``
names a bad value and what is allowed), its presets, and a :class:`Method` subclass whose
``run`` unlearns. Adding a method is that file plus one line in ``BUILTIN``; the CLI flags,
the sweep spec and the trial all come from here.

Tasks may share a method name: a key ``NAME@TASK`` is task TASK's own ``NAME`` (SalUn is
``salun`` for both a classifier and a text-to-image UNet, two Methods). ``method_for``,
``method_knobs`` and ``list_methods(task)`` resolve it; ``get_method`` takes the keys as they are.
"""
from __future__ import annotations

import dataclasses
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar

from torch import nn

from orchestrator.errors import UserError
from orchestrator.methods.shared_work import SharedWork
from orchestrator.registry import Registry

# name (or NAME@TASK, see above) -> "module:attribute" of its Method instance, imported on first use
BUILTIN: dict[str, str] = {
    "scissorhands": "orchestrator.methods.scissorhands:METHOD",
    "scissorhands_diffusion": "orchestrator.methods.scissorhands_diffusion:METHOD",
    "finetune": "orchestrator.methods.finetune:METHOD",
    "grad_ascent": "orchestrator.methods.grad_ascent:METHOD",
    "random_label": "orchestrator.methods.random_label:METHOD",
    "l1_sparse": "orchestrator.methods.l1_sparse:METHOD",
    "salun": "orchestrator.methods.salun:METHOD",
    "salun@text_to_image": "orchestrator.methods.salun_diffusion:METHOD",
    "ssd": "orchestrator.methods.ssd:METHOD",
    "scrub": "orchestrator.methods.scrub:METHOD",
    "neggrad_plus": "orchestrator.methods.neggrad_plus:METHOD",
    "esd_x": "orchestrator.methods.esd:ESD_X",
    "esd_u": "orchestrator.methods.esd:ESD_U",
}


@dataclass
class MethodResult:
    model: nn.Module
    seconds: float  # RTE: everything the method does, no evaluation
    history: list[dict] = field(default_factory=list)  # per-epoch training statistics
    stats: dict = field(default_factory=dict)  # e.g. how many entries were trimmed


class Method(ABC):
    name: ClassVar[str]
    tasks: ClassVar[tuple[str, ...]]  # the tasks whose data ``run`` takes
    config_class: ClassVar[type]
    presets: ClassVar[tuple[str, ...]] = ("auto",)  # "auto" comes first and always exists

    def preset(self, name: str, *, model_size: str = "small", forget_kind: str = "class") -> Any:
        """The knob values a preset stands for, for this model size and kind of forget set."""
        if name not in self.presets:
            raise UserError(f"--preset {name!r}: allowed {', '.join(self.presets)} (method {self.name})")
        return self.config_class()

    def preset_note(self, name: str, *, model_size: str = "small", forget_kind: str = "class") -> str | None:
        """One line a run with this preset should print: what its measurements say it can do."""
        return None

    def config(self, knobs: Any = None, **changes) -> Any:
        """A validated config: ``knobs`` (a config, a dict, or None for the defaults) with ``changes``."""
        if knobs is None or isinstance(knobs, dict):
            knobs = self.from_dict(knobs or {})
        unknown = sorted(set(changes) - set(self.knob_names()))
        if unknown:
            raise UserError(f"unknown {self.name} knob(s) {unknown}; allowed: {', '.join(self.knob_names())}")
        cfg = dataclasses.replace(knobs, **tuples(changes))
        cfg.validate()
        return cfg

    def knob_names(self) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(self.config_class))

    def from_dict(self, d: dict) -> Any:
        unknown = sorted(set(d) - set(self.knob_names()))
        if unknown:
            raise UserError(f"unknown {self.name} knob(s) {unknown}; allowed: {', '.join(self.knob_names())}")
        return self.config_class(**tuples(d))

    def layers(self, model: nn.Module, cfg: Any) -> dict[str, list[str]]:
        """The parameter names the method changes by layer choice (e.g. trim / project), printed
        and logged with every run; {} for a method that changes every parameter."""
        return {}

    def history_length(self, cfg: Any) -> int:
        """How many records ``run`` reports (one per epoch; a method without epochs says its own)."""
        return getattr(cfg, "epochs", 0)

    def seeded(self, cfg: Any) -> bool:
        """Whether the run draws from its generator (False: every seed gives the same model)."""
        return True

    def run(self, model: nn.Module, data: Any, cfg: Any, generator: Any, *,
            on_epoch: Callable[[dict], None] | None = None, backend: str | None = None,
            shared: SharedWork | None = None) -> MethodResult:
        """Validate ``cfg``, unlearn in place (seeded by ``generator`` only), time it (the RTE) and
        leave the model in eval mode. ``shared``: where work that does not depend on the searched
        knobs is kept (None: computed every time). The RTE counts that work whether it was
        computed or found: it is what the method costs on its own."""
        cfg.validate()
        shared = shared or SharedWork()
        start = time.perf_counter()
        history, stats = self.unlearn(model, data, cfg, generator, on_epoch=on_epoch, backend=backend, shared=shared)
        seconds = time.perf_counter() - start + shared.seconds_saved
        return MethodResult(model.eval(), seconds, history, {**stats, **shared.stats()})

    @abstractmethod
    def unlearn(self, model: nn.Module, data: Any, cfg: Any, generator: Any, *,
                on_epoch: Callable[[dict], None] | None, backend: str | None,
                shared: SharedWork) -> tuple[list[dict], dict]:
        """The method itself: change ``model`` in place; return the per-epoch records (each also
        passed to ``on_epoch``) and statistics of what it changed. Work that depends only on the
        model, the data, the generator and a few knobs goes through ``shared``."""


def tuples(d: dict) -> dict:
    """YAML / JSON lists become the tuples the frozen configs hold."""
    return {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}


REGISTRY: Registry[Method] = Registry("method", BUILTIN)


def register(method: Method) -> Method:
    """Make a method available by name at run time (built-in ones are listed in ``BUILTIN``)."""
    return REGISTRY.add(method.name, method)


def unregister(name: str) -> None:
    REGISTRY.remove(name)


def get_method(name: str) -> Method:
    return REGISTRY.get(name)


def list_methods(task: str | None = None) -> list[str]:
    """The names ``--method`` takes for ``task``; None: every registry key (each Method once)."""
    if task is None:
        return REGISTRY.names()
    return list(dict.fromkeys(n.partition("@")[0] for n in REGISTRY.names() if task in get_method(n).tasks))


def method_for(name: str, task: str) -> Method:
    """The named method of ``task`` (its own ``NAME@TASK`` first), refused in one line when it
    does not serve ``task``."""
    own = f"{name}@{task}"
    m = get_method(own if own in REGISTRY.names() else name)
    if task not in m.tasks:
        raise UserError(f"--method {name}: a {' / '.join(m.tasks)} method; {task} methods: "
                        f"{', '.join(list_methods(task))}")
    return m


def method_knobs(method: str, knobs: Any, task: str) -> Any:
    """A run config's knobs as its method's config: defaults for None, parsed from a dict."""
    m = method_for(method, task)
    if knobs is None or isinstance(knobs, dict):
        return m.from_dict(knobs or {})
    if not isinstance(knobs, m.config_class):
        raise UserError(f"knobs {type(knobs).__name__} do not belong to method {method} "
                        f"(expected {m.config_class.__name__})")
    return knobs

