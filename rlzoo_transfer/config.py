"""Hyperparameters: ``agents/der.yml`` + ``agents/<method>.yml`` + ``-p key=value`` overrides -> one config.

Keys are validated: an unknown key (a typo) is a ``ConfigError`` naming the valid keys and the closest match.
Values in overrides are parsed as YAML scalars (``-p learning_rate=2e-4 compile=true``).
"""
from __future__ import annotations

import difflib
import re
import sys
from pathlib import Path
from typing import Any, Callable, Iterable

import yaml

from rlzoo_transfer import yamlfile

AGENTS_DIR = Path(__file__).resolve().parent.parent / "agents"

#: Keys that configure the network (passed to the policy), not the DER algorithm.
NETWORK_KEYS = ("n_atoms", "v_min", "v_max", "hidden", "sigma0")
#: Keys the train loop reads itself.
RUN_KEYS = ("eval_epsilon",)


class ConfigError(ValueError):
    """A bad hyperparameter name or value."""


def read_yaml(path: Path) -> dict[str, Any]:
    data = yamlfile.load(path, ConfigError) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of hyperparameters")
    return data


_NUMBER = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


#: Seeds go to numpy's legacy seeding (< 2**32) and to ALE (a C int), so the common range is [0, 2**31).
MAX_SEED = 2**31 - 1


def seed_arg(text: str) -> int:
    """argparse ``type`` for seeds: an int in [0, 2**31 - 1], else argparse's one-line usage error (exit 2)."""
    import argparse

    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid seed {text!r}: expected an integer") from None
    if not 0 <= value <= MAX_SEED:
        raise argparse.ArgumentTypeError(f"invalid seed {value}: seeds go from 0 to {MAX_SEED}")
    return value


def resolve_device(text: str) -> str:
    """A ``--device`` value as the torch device the run will use: ``"auto"`` -> ``"cuda"`` when torch sees a GPU,
    else ``"cpu"``; ``cpu``, ``cuda``, ``cuda:N``, ``mps`` as given once this machine has them.

    ConfigError for a device torch does not know (``tpu``: a traceback before) or this machine lacks: SB3 falls back
    to the CPU silently, and the run's config.yml would then say ``cuda`` for a run made on the CPU.
    """
    import torch

    if text == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(text)
    except (RuntimeError, ValueError):
        raise ConfigError(f"unknown device {text!r}: use cpu, cuda, cuda:N, mps or auto") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device {text!r}: torch {torch.__version__} sees no CUDA device here; "
                              f"use --device cpu (or auto)")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ConfigError(f"device {text!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    elif device.type == "mps":
        if not torch.backends.mps.is_available():
            raise ConfigError(f"device {text!r}: MPS is not available here; use --device cpu (or auto)")
    elif device.type != "cpu":
        raise ConfigError(f"device {text!r}: runs support cpu, cuda and mps")
    return str(device)


def check_ranges(args: Any, positive: Iterable[str] = (), non_negative: Iterable[str] = (),
                 error: type[Exception] = ConfigError) -> None:
    """``error`` naming every option of ``args`` (an argparse namespace or a config object) out of its range, e.g.
    ``out of range: --steps 0 (must be > 0), --eval-freq -5 (must be > 0)``; options that are None are unset and
    pass.  The one range check of every CLI (train, lockstep, pretrain, enjoy, the vision commands), so that a bad
    number is refused before any work with one message format, naming the options at fault and their values."""
    def flag(name: str) -> str:
        return "--" + name.replace("_", "-")

    bad = [f"{flag(k)} {v} (must be > 0)" for k in positive if (v := getattr(args, k)) is not None and not v > 0]
    bad += [f"{flag(k)} {v} (must be >= 0)" for k in non_negative
            if (v := getattr(args, k)) is not None and not v >= 0]
    if bad:
        raise error("out of range: " + ", ".join(bad))


def progress_bar_wanted(no_progress: bool, stream=None) -> bool:
    """A progress bar only where someone watches: not with ``--no-progress``, and not when ``stream`` (default
    stderr) is a file or pipe (``nohup``, ``make run > log``), where a bar prints nothing useful and the runs print a
    progress line a minute instead."""
    stream = sys.stderr if stream is None else stream
    return not no_progress and bool(getattr(stream, "isatty", lambda: False)())


def check_threads(threads: int | None, minimum: int = 0) -> None:
    """ConfigError unless ``--threads`` is None or >= minimum (0 meaning torch's default where allowed)."""
    if threads is not None and threads < minimum:
        raise ConfigError(f"--threads must be >= {minimum}, got {threads}")


def parse_overrides(items: Iterable[str]) -> dict[str, Any]:
    """['a=1', 'b=x'] -> {'a': 1, 'b': 'x'} (values as YAML scalars)."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"bad hyperparameter override {item!r}: expected key=value")
        try:
            parsed = yaml.safe_load(value)
        except yaml.YAMLError:
            parsed = value
        if isinstance(parsed, str) and _NUMBER.fullmatch(parsed.strip()):
            parsed = float(parsed)  # YAML 1.1 reads "1e-4" (no dot) as a string; users mean the number
        out[key.strip()] = parsed
    return out


def check_keys(given: Iterable[str], valid: Iterable[str], what: str = "hyperparameter") -> None:
    valid = sorted(valid)
    for key in given:
        if key not in valid:
            close = difflib.get_close_matches(key, valid, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise ConfigError(f"unknown {what} {key!r}.{hint} Valid: {', '.join(valid)}")


def load_config(method_file: str | None = None, overrides: dict[str, Any] | None = None,
                base: str = "der") -> dict[str, Any]:
    """Resolved hyperparameters: base file, then the method's file (may add keys), then overrides."""
    config = read_yaml(AGENTS_DIR / f"{base}.yml")
    if method_file:
        path = AGENTS_DIR / f"{method_file}.yml"
        if path.exists():
            config.update(read_yaml(path))
    overrides = overrides or {}
    check_keys(overrides, config)
    for key, value in overrides.items():
        default = config[key]
        if isinstance(default, bool) != isinstance(value, bool) or (
                isinstance(default, (int, float)) and not isinstance(value, (int, float))):
            raise ConfigError(f"hyperparameter {key}={value!r}: expected a {type(default).__name__} like {default!r}")
        if isinstance(default, int) and not isinstance(default, bool) and isinstance(value, float):
            if not value.is_integer():
                raise ConfigError(f"hyperparameter {key}={value!r}: expected an int like {default!r}")
            value = int(value)
        config[key] = type(default)(value) if isinstance(default, float) else value
    check_values(config)
    return config


#: The range of each numeric hyperparameter (name -> (test, what it must be)); a value outside it failed late, as a
#: traceback from the network (n_atoms=0) or from the replay once training began (batch_size=-3).  Hub's ``k``
#: depends on the number of sources: HubPathway checks it (1 <= k <= m) when the network is built.
RANGES: dict[str, tuple[Callable[[float], bool], str]] = {
    **{k: (lambda v: v > 0, "> 0") for k in ("learning_rate", "adam_eps", "max_grad_norm", "reward_clip")},
    **{k: (lambda v: v >= 1, ">= 1") for k in ("batch_size", "n_steps", "target_update_interval", "train_freq",
                                               "gradient_steps", "buffer_size", "hidden")},
    **{k: (lambda v: v >= 0, ">= 0") for k in ("learning_starts", "priority_exponent", "sigma0", "explore_weight",
                                               "dependency_weight")},
    **{k: (lambda v: 0 <= v <= 1, "in [0, 1]") for k in ("priority_weight", "eval_epsilon")},
    "gamma": (lambda v: 0 < v <= 1, "in (0, 1]"),
    "n_atoms": (lambda v: v >= 2, ">= 2"),
}


def check_values(config: dict[str, Any]) -> None:
    """ConfigError naming the first hyperparameter outside :data:`RANGES`, a ``v_min`` not below ``v_max``, a replay
    smaller than the n-step window, or a source named twice in ``sources``."""
    for key, (ok, must) in RANGES.items():
        value = config.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and not ok(value):
            raise ConfigError(f"hyperparameter {key}={value!r}: must be {must}")
    if "v_min" in config and "v_max" in config and not config["v_min"] < config["v_max"]:
        raise ConfigError(f"hyperparameters v_min={config['v_min']!r}, v_max={config['v_max']!r}: v_min must be "
                          f"below v_max (the C51 support)")
    if config.get("buffer_size", 1) < config.get("n_steps", 1):
        raise ConfigError(f"hyperparameters buffer_size={config['buffer_size']!r}, n_steps={config['n_steps']!r}: "
                          f"the replay must hold at least one n-step window")
    if config.get("sources"):
        from rlzoo_transfer.rl.registry import source_names

        names = source_names(config["sources"])
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ConfigError(f"hyperparameter sources={config['sources']!r}: {twice[0]} named twice")


def split_config(config: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """(DER kwargs, network kwargs, run kwargs + {"method": method settings}).

    DER's own keys are those of ``agents/der.yml`` (less the network and run keys); every key a method's file adds
    is a method setting, passed to its network builder.
    """
    base = read_yaml(AGENTS_DIR / "der.yml")
    net = {k: v for k, v in config.items() if k in NETWORK_KEYS}
    run = {k: v for k, v in config.items() if k in RUN_KEYS}
    algo = {k: v for k, v in config.items() if k in base and k not in net and k not in run}
    method = {k: v for k, v in config.items() if k not in base}
    return algo, net, {**run, "method": method}
