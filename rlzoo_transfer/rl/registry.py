"""The methods by name (``--method``) and what each needs, without building anything.

Torch-free, so that ``sweep`` plans (which methods exist, which take ``--source``, which can share a lock-step
group) and ``train --help`` lists the methods without importing torch and SB3 (~3 s on these CPUs).  A method names
its network builder as ``"module:function"``; :mod:`rlzoo_transfer.rl.methods` holds the builders and is imported
only when a network is built.  Adding a method: a builder there (or in a module of your own) and one ``register``
line here.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any, Callable

from rlzoo_transfer.config import ConfigError, split_config


class UnknownMethodError(ValueError):
    pass


def source_names(names: str | list[str] | None) -> list[str]:
    """``"Seaquest, Riverraid"`` or a list -> the source names; ``-p sources=`` (None) -> none."""
    if names is None:
        return []
    return [s.strip() for s in (names.split(",") if isinstance(names, str) else names) if str(s).strip()]


@dataclass(frozen=True)
class Method:
    name: str
    summary: str
    paper: str
    builder: str                       # "module:function" returning the network (rl/methods.py), imported on use
    config_file: str | None = None     # agents/<config_file>.yml holds its settings
    fixed: dict[str, Any] = field(default_factory=dict)  # settings the method pins (e.g. zoo-lite: mode=lite)
    needs_source: bool = False         # takes --source (finetune)
    from_zoo: bool = True              # starts from zoo sources (all but scratch)
    aux_loss: bool = False             # adds an auxiliary loss to DER's (hub, kflow)

    @property
    def lockstep(self) -> bool:
        """Whether agents of this method can train in a lock-step group (rl/lockstep.py): no auxiliary loss."""
        return not self.aux_loss

    @property
    def build(self) -> Callable[..., Any]:
        """The builder function: ``build(observation_space, n_actions, n_atoms=..., **net_kwargs) -> network``."""
        module, _, function = self.builder.partition(":")
        return getattr(importlib.import_module(module), function)

    def folder(self, source: str | None) -> str:
        """Run-folder name: ``finetune-Seaquest`` for a method with a source, else the method name."""
        return f"{self.name}-{source}" if self.needs_source and source else self.name

    def sources(self, source: str | None, settings: dict[str, Any]) -> list[str]:
        """The zoo sources the network starts from: finetune's ``--source``, the ``sources`` setting of the zoo /
        hub / kflow families, none for scratch."""
        if not self.from_zoo:
            return []
        if self.needs_source:
            return [source] if source else []
        return source_names(settings.get("sources"))

    def pin(self, settings: dict[str, Any]) -> dict[str, Any]:
        """``settings`` with the values this method pins (zoo-lite: ``mode: lite``, hub-noexplore: ``explore:
        false``): what its network is built with, and so what a run's ``config.yml`` records."""
        return {**settings, **self.fixed}

    def check_pins(self, overrides: dict[str, Any]) -> None:
        """ConfigError for a ``-p`` override that contradicts a pinned value (``--method zoo-lite -p mode=adaptive``
        would have been silently overridden), naming the method that leaves the setting free."""
        for key, value in overrides.items():
            if key in self.fixed and value != self.fixed[key]:
                free = next((m.name for m in METHODS.values() if m.builder == self.builder and key not in m.fixed),
                            None)
                raise ConfigError(f"--method {self.name} pins {key}={self.fixed[key]!r} (that is what it is); "
                                  f"-p {key}={value!r} contradicts it" + (f": use --method {free}" if free else ""))

    def network(self, game: str, source: str | None, settings: dict[str, Any]) -> tuple[Callable[..., Any], dict]:
        """(net_builder, net_kwargs) for the policy."""
        if not self.from_zoo:
            return self.build, {}
        kwargs = {**self.pin(settings), "game": game}
        if self.needs_source:
            kwargs["source"] = source
        return self.build, kwargs

    def policy_kwargs(self, game: str, source: str | None, config: dict[str, Any]) -> dict[str, Any]:
        """``DERPolicy``'s network arguments from a resolved config (``config.load_config``): ``net_builder``, its
        ``net_kwargs`` (DER's network settings and the method's own), ``n_atoms``, ``v_min``, ``v_max``.  Train
        builds the policy with them and ``sweep`` its plan-time check of ``-p`` values, so that the two agree."""
        _, net, run = split_config(config)
        builder, builder_kwargs = self.network(game, source, run["method"])
        atoms = {k: net[k] for k in ("n_atoms", "v_min", "v_max")}
        return {"net_builder": builder, "net_kwargs": {**{k: v for k, v in net.items() if k not in atoms},
                                                       **builder_kwargs}, **atoms}


METHODS: dict[str, Method] = {}


def register(method: Method) -> Method:
    METHODS[method.name] = method
    return method


def pinned(method: str | None, settings: dict[str, Any]) -> dict[str, Any]:
    """A run's recorded ``hyperparams`` with its method's pins applied: runs made before config.yml recorded them
    (2026-12-07) hold the agents/ default there (zoo-lite ``mode: adaptive``), though they were built pinned.  An
    unknown method's settings come back as they are."""
    return METHODS[method].pin(settings) if method in METHODS else dict(settings)


def get_method(name: str) -> Method:
    if name not in METHODS:
        prefix, _, source = name.rpartition("-")
        if prefix in METHODS and METHODS[prefix].needs_source and source:
            raise UnknownMethodError(f"unknown method {name!r}: that is the run folder of --method {prefix} "
                                     f"--source {source}")
        raise UnknownMethodError(f"unknown method {name!r}. Valid methods: {', '.join(METHODS)}")
    return METHODS[name]


_M = "rlzoo_transfer.rl.methods:"
ZT = "Shu et al., Zoo-Tuning, ICML 2021"
HP = "Shu et al., Hub-Pathway, NeurIPS 2022"
register(Method("scratch", "DER from random initialisation", "van Hasselt et al. 2019",
                "rlzoo_transfer.rl.policies:build_der_network", from_zoo=False))
register(Method("finetune", "DER initialised from one source (--source)", "Zoo-Tuning's baseline",
                _M + "build_finetune", "finetune", needs_source=True))
register(Method("zoo", "every conv / linear an AdaAgg layer over the sources", ZT, _M + "build_zoo", "zoo"))
register(Method("zoo-lite", "lite Zoo-Tuning: temporal ensemble of batch-mean gates", ZT, _M + "build_zoo", "zoo",
                {"mode": "lite"}))
register(Method("zoo-avg", "average aggregation (ablation)", ZT, _M + "build_zoo", "zoo", {"mode": "average"}))
register(Method("zoo-noalign", "Zoo-Tuning without channel alignment T (ablation)", ZT, _M + "build_zoo", "zoo",
                {"align": False}))
register(Method("hub", "Hub-Pathway over the source policies", HP, _M + "build_hub", "hub", aux_loss=True))
register(Method("hub-random", "Hub-Pathway with a random pathway (ablation)", HP, _M + "build_hub", "hub",
                {"random_pathway": True}, aux_loss=True))
register(Method("hub-noexplore", "Hub-Pathway without the explore loss (ablation)", HP, _M + "build_hub", "hub",
                {"explore": False}, aux_loss=True))
register(Method("hub-noexploit", "Hub-Pathway without the exploit loss (ablation)", HP, _M + "build_hub", "hub",
                {"exploit": False}, aux_loss=True))
register(Method("kflow", "Knowledge Flow: teachers flow into a fresh student", "Liu, Peng & Schwing, ICLR 2019",
                _M + "build_kflow", "kflow", aux_loss=True))
