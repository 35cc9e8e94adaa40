"""The ``train`` arguments a sweep passes on, judged before any run starts (exit 2, not one failed run per seed),
and a pre-registered test's protocol turned into ``train`` arguments (``sweep --confirm``).

* :func:`check_train_arguments`: unknown options, options the sweep sets itself (:data:`SWEEP_OWNED`), bad ``-p``
  keys or values for every method swept (pins included);
* :func:`check_pending_sources`: each pending method's zoo sources against its ``zoo.yml`` (torch-free);
* :func:`check_networks`: where ``-p`` sets a network setting, the network built once per (game, method, source)
  as train builds it (the only check that loads torch);
* :func:`take_registration` / :func:`registered_arguments`: ``--confirm YML``.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Mapping, Sequence

import yaml

from rlzoo_transfer.manifest import DEFAULT_ZOO, ZooError, read_manifest
from rlzoo_transfer.sweep_plan import PENDING, Job, RunSpec, SweepError, method_arguments, parse_method

#: train options the sweep sets itself, refused after ``--`` (train would take the last one given, and the runs would
#: then not be the ones the sweep plans, skips, resumes and reports): option dest -> (option, what to use instead).
SWEEP_OWNED = {
    "game": ("--game", "use the sweep's --games"),
    "method": ("--method", "use the sweep's --methods"),
    "source": ("--source", "use the sweep's --methods NAME:SOURCE (e.g. finetune:Seaquest)"),
    "seed": ("--seed", "use the sweep's --seeds"),
    "log_dir": ("--log-dir", "use the sweep's --log-dir (where it looks for the runs)"),
    "steps": ("--steps", "use the sweep's --steps"),
    "resume": ("--resume", "the sweep resumes each interrupted run (a folder without final.json) by itself"),
}


def train_options(prog: str, unset: Sequence[str] = ()) -> argparse.ArgumentParser:
    """train's options (abbreviations resolve as train resolves them), those of :data:`SWEEP_OWNED` and the dests
    ``unset`` defaulting to None so that giving one shows."""
    from rlzoo_transfer.train import add_run_options

    own = argparse.ArgumentParser(prog=prog, add_help=False)
    for flag in ("--game", "--method", "--source", "--seed"):
        own.add_argument(flag)
    add_run_options(own)
    own.set_defaults(**dict.fromkeys([*SWEEP_OWNED, *unset]))
    return own


def run_overrides(arguments: Sequence[str], prog: str = "train") -> dict:
    """The ``-p`` overrides of train ``arguments`` (``config.parse_overrides``; raises its ConfigError)."""
    from rlzoo_transfer.config import parse_overrides

    return parse_overrides(train_options(prog).parse_args(arguments).hyperparams)


def check_train_arguments(parser: argparse.ArgumentParser, extra: Sequence[str], methods: Sequence[str],
                          method_extra: Mapping[tuple[str, str | None], Sequence[str]] | None = None) -> None:
    """``parser.error`` (exit 2) for train arguments after ``--`` that every run would reject - an unknown option, one
    the sweep sets itself (:data:`SWEEP_OWNED`), a bad ``-p`` key or value for one of ``methods`` - before the first
    run starts: a sweep of 90 runs otherwise starts 90 processes that each fail into their own train.log (the zoo
    sources: :func:`check_pending_sources`, once the plan knows which runs are pending).  ``method_extra``: see
    :func:`plan`."""
    from rlzoo_transfer.config import ConfigError, load_config
    from rlzoo_transfer.rl.registry import get_method

    prog = f"{parser.prog} (train arguments after --)"
    given = train_options(prog).parse_args(extra)
    for dest, (flag, advice) in SWEEP_OWNED.items():
        if getattr(given, dest) is not None:
            parser.error(f"after --: {flag} is set by the sweep itself: {advice}")
    for text in dict.fromkeys(methods):
        name, source = parse_method(text)
        method = get_method(name)
        try:
            overrides = run_overrides(method_arguments(name, source, extra, method_extra), prog)
            method.check_pins(overrides)
            load_config(method.config_file, overrides)
        except ConfigError as err:
            parser.error(f"after --: {err} (method {name})")


def check_pending_sources(jobs: Sequence[Job], extra: Sequence[str],
                          method_extra: Mapping[tuple[str, str | None], Sequence[str]] | None = None) -> None:
    """SweepError naming the method whose pending runs start from a source missing from its zoo
    (:func:`check_sources`); methods whose runs are all finished are not checked (a re-run of a completed sweep
    whose zoo has moved skips them all).  The ``-p`` values were judged by :func:`check_train_arguments`."""
    from rlzoo_transfer.config import load_config
    from rlzoo_transfer.rl.registry import get_method

    for name, source in dict.fromkeys((j.spec.method, j.spec.source) for j in jobs if j.status == PENDING):
        method = get_method(name)
        config = load_config(method.config_file, run_overrides(method_arguments(name, source, extra, method_extra)))
        try:
            check_sources(method, source, config)
        except SweepError as err:
            raise SweepError(f"method {name}{':' + source if source else ''}: {err}") from None


def check_sources(method, source: str | None, config: dict) -> None:
    """SweepError unless every zoo source ``method`` starts from (finetune's ``source``, the ``sources`` setting of
    the others) is listed in its zoo's ``zoo.yml`` (``-p zoo_dir``, default ``pretrain/``), read without torch: train
    refuses such a source only once its run has started."""
    names = method.sources(source, config)
    if not method.from_zoo:
        return
    if not names:
        raise SweepError("no sources named: set -p sources=A,B to sources listed in the zoo's zoo.yml")
    zoo_dir = Path(config.get("zoo_dir") or DEFAULT_ZOO)
    listed = zoo_source_names(zoo_dir)
    missing = [n for n in names if n not in listed]
    if missing:
        raise SweepError(f"source {missing[0]!r} is not in {zoo_dir / 'zoo.yml'} (it has {', '.join(listed)})")


def zoo_source_names(zoo_dir: Path) -> list[str]:
    """The source names of ``zoo_dir/zoo.yml`` (``manifest.read_manifest``, torch-free).

    :raises SweepError: no readable manifest listing sources, with its message
    """
    try:
        return list(read_manifest(zoo_dir))
    except ZooError as err:
        raise SweepError(str(err)) from None


#: The observation train's networks are built for (envs.py: 4 stacked 84 x 84 frames); only its shape is read.
OBSERVATION = SimpleNamespace(shape=(4, 84, 84))


def check_networks(jobs: Sequence[Job], extra: Sequence[str],
                   method_extra: Mapping[tuple[str, str | None], Sequence[str]] | None = None) -> None:
    """SweepError for a ``-p`` value a pending run's network would reject (hub's ``k`` above its number of sources,
    zoo's ``gate_norm=foo``, a ``hidden`` the zoo's sources do not have): the methods check those values only when
    they build the network, so each (game, method, source) whose ``-p`` sets a network setting is built once here,
    as train builds it.  That needs torch, which planning loads for nothing else; without such a ``-p`` the values
    are the method's shipped ones, already judged by ``load_config`` and :func:`check_sources`."""
    seen = set()
    for job in jobs:
        key = (job.spec.game, job.spec.method, job.spec.source)
        if job.status == PENDING and key not in seen:
            seen.add(key)
            build_network(job.spec, run_overrides(method_arguments(*key[1:], extra, method_extra)))


def build_network(spec: RunSpec, overrides: dict) -> None:
    """Build ``spec``'s network with ``overrides`` as ``run.build_model`` does (``Method.policy_kwargs``, the same
    message), when they set one of its settings (``config.NETWORK_KEYS`` or the method's own); on a machine without
    torch, nothing (the runs check).

    :raises SweepError: the zoo or the network rejects the settings
    """
    from rlzoo_transfer.config import NETWORK_KEYS, load_config, split_config
    from rlzoo_transfer.rl.registry import get_method

    method = get_method(spec.method)
    config = load_config(method.config_file, overrides)
    if not set(overrides) & {*NETWORK_KEYS, *split_config(config)[2]["method"]}:
        return
    try:
        from rlzoo_transfer.games import action_meanings

        policy = method.policy_kwargs(spec.game, spec.source, config)
    except ImportError:
        return
    try:
        policy["net_builder"](OBSERVATION, len(action_meanings(spec.game)), n_atoms=policy["n_atoms"],
                              **policy["net_kwargs"])
    except ZooError as err:
        raise SweepError(f"{spec.game}/{spec.folder}: {err}") from None
    except (ValueError, TypeError) as err:
        files = "agents/der.yml" + (f" + agents/{method.config_file}.yml" if method.config_file else "")
        raise SweepError(f"{spec.game}/{spec.folder}: --method {spec.method} cannot be built with these settings: "
                         f"{err} (check the -p overrides and {files})") from None


#: What a registration's protocol fixes (``confirm.PROTOCOL_KEYS``) -> the train option that sets it; ``-p`` sets
#: its hyperparameters.  With ``--confirm`` the sweep passes them itself, and refuses them after ``--``.
PROTOCOL_OPTIONS = {"steps": "--steps", "eval_freq": "--eval-freq", "eval_episodes": "--eval-episodes",
                    "final_eval_episodes": "--final-eval-episodes", "hyperparams": "-p"}
#: Protocol settings train has no option for, and the value its runs record.
TRAIN_FIXED = {"n_envs": 1}


def take_registration(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    """Fill ``args.games / methods / seeds`` from the registration ``args.confirm``, and ``args.method_extra`` with
    each arm's registered protocol as train arguments (:func:`registered_arguments`).

    Refused (``parser.error``, exit 2): --games / --methods / --seeds given too, --steps or a protocol option after
    ``--`` (the runs would be deviations), an unreadable registration, a protocol this code cannot run, or a
    registration that HEAD does not contain (commit it first: each run records HEAD, and a run made at a commit
    without the registration counts as a deviation).  Where git cannot tell (no ``.git``), a note says so and the
    sweep goes on.
    """
    from rlzoo_transfer.confirm import ConfirmError, load_registration
    from rlzoo_transfer.provenance import file_in_commit, git_head

    if args.games or args.methods or args.seeds:
        parser.error("--confirm takes the game, methods and seeds from the registration: drop --games, --methods "
                     "and --seeds")
    given = train_options(f"{parser.prog} (train arguments after --)", PROTOCOL_OPTIONS).parse_args(args.extra)
    changing = [flag for dest, flag in PROTOCOL_OPTIONS.items() if getattr(given, dest) is not None]
    if args.steps is not None or changing:
        parser.error(f"--confirm runs the registered protocol: {' '.join(changing) or '--steps'} would change it")
    try:
        reg = load_registration(args.confirm)
        args.method_extra = {parse_method(arm): registered_arguments(reg, arm) for arm in reg.arms}
    except (ConfirmError, SweepError) as err:
        parser.error(f"{args.confirm}: {err}" if isinstance(err, SweepError) else str(err))
    committed = file_in_commit(git_head() or "", args.confirm)
    if committed is False:
        parser.error(f"{args.confirm} is not in the commit checked out (HEAD): commit it before its runs start "
                     f"(git add {args.confirm} && git commit), so that every run records a commit that has it")
    if committed is None:
        print(f"note: git cannot tell whether {args.confirm} is committed here; commit it before the runs start",
              file=sys.stderr)
    args.games, args.methods, args.seeds = [reg.game], [reg.method, reg.baseline], list(reg.seeds)


def registered_arguments(reg, arm: str) -> list[str]:
    """The train arguments that make a run of ``arm`` follow ``reg``'s protocol, as ``confirm check`` judges it
    (``confirm.protocol_differences``): ``--steps``, ``--eval-freq``, ``--eval-episodes``, ``--final-eval-episodes``
    as registered and ``-p key=value`` for each hyperparameter whose registered value is not the method's default.

    :raises SweepError: a protocol this code cannot reproduce - a setting train has no option for at another value
        (``n_envs``), or hyperparameters ``agents/*.yml`` no longer has, or has gained, since the registration
    """
    from rlzoo_transfer.config import ConfigError, load_config, parse_overrides
    from rlzoo_transfer.confirm import IGNORED_HYPERPARAMS, PROTOCOL_KEYS, protocol_differences
    from rlzoo_transfer.rl.registry import UnknownMethodError, get_method

    protocol = reg.protocol[arm] if isinstance(reg.protocol[arm], dict) else {}
    out = []
    for key in PROTOCOL_KEYS:
        value = protocol.get(key)
        if key in PROTOCOL_OPTIONS and type(value) is int:
            out += [PROTOCOL_OPTIONS[key], str(value)]
        elif key in PROTOCOL_OPTIONS or value not in (None, TRAIN_FIXED.get(key)):
            raise SweepError(f"{arm}'s registered {key} {value!r} is not one train can run")
    try:
        method = get_method(parse_method(arm)[0])
        defaults = method.pin(load_config(method.config_file))
    except (UnknownMethodError, ConfigError) as err:
        raise SweepError(f"arm {arm}: {err}") from None
    registered = {k: v for k, v in (protocol.get("hyperparams") or {}).items() if k not in IGNORED_HYPERPARAMS}
    overrides = [override_text(k, v) for k, v in registered.items() if k in defaults and v != defaults[k]]
    try:
        resolved = method.pin(load_config(method.config_file, parse_overrides(overrides)))
    except ConfigError as err:
        raise SweepError(f"{arm}'s registered hyperparameters: {err}") from None
    resolved = {k: v for k, v in resolved.items() if k not in IGNORED_HYPERPARAMS}
    differences = protocol_differences({"hyperparams": registered}, {"hyperparams": resolved})
    if differences:
        raise SweepError(f"{arm}'s runs cannot follow the registered hyperparameters with this code (registered -> "
                         f"what a run would record: {'; '.join(differences)}): agents/*.yml has changed since")
    return out + (["-p", *overrides] if overrides else [])


def override_text(key: str, value) -> str:
    """``key=value`` with the value as a YAML scalar, read back as ``value`` by ``config.parse_overrides``."""
    text = yaml.safe_dump(value, default_flow_style=True, width=1 << 30).strip()
    return f"{key}={text.removesuffix('...').strip()}"
