"""Transfer methods: name -> how to build the DER network (and which agents/<file>.yml holds its settings).

A method is one small builder: ``network(game, source, settings) -> (net_builder, net_kwargs)``, where
``net_builder(observation_space, n_actions, n_atoms=..., **net_kwargs)`` returns a network with DERNetwork's
contract (rl/policies.py).  The builder is a module-level function so SB3 can save and reload the policy.
Adding a method touches no algorithm code.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from rlzoo_transfer.rl.policies import build_der_network


class UnknownMethodError(ValueError):
    pass


@dataclass(frozen=True)
class Method:
    name: str
    summary: str
    paper: str
    network: Callable[[str, str | None, dict[str, Any]], tuple[Callable, dict[str, Any]]]
    config_file: str | None = None
    needs_source: bool = False

    def folder(self, source: str | None) -> str:
        """Run-folder name: ``finetune-Seaquest`` for a method with a source, else the method name."""
        return f"{self.name}-{source}" if self.needs_source and source else self.name


def _scratch(game: str, source: str | None, settings: dict[str, Any]):
    return build_der_network, {}


METHODS: dict[str, Method] = {}


def register(method: Method) -> Method:
    METHODS[method.name] = method
    return method


register(Method("scratch", "DER from random initialisation", "van Hasselt et al. 2019", _scratch))


def get_method(name: str) -> Method:
    if name not in METHODS:
        raise UnknownMethodError(f"unknown method {name!r}. Valid methods: {', '.join(METHODS)}")
    return METHODS[name]
