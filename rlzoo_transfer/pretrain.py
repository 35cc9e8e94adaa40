"""Source policies: ``python -m rlzoo_transfer.pretrain --game Seaquest`` (and Riverraid, any game).

Trains exactly DER's network (so it transfers layer by layer) for far more than 100k agent steps with the
settings of ``agents/pretrain.yml`` (DER's network and loss with Rainbow's schedule: batch 32, one update per 4
agent steps, i.e. ``gradient_steps = n_envs // 4`` per vector step; see that file for why), in ``n_envs``
parallel games, resumable (``--resume``).  At the end it writes ``pretrain/<Game>.pt`` (the online network's state_dict:
tensors only, loadable with ``torch.load(weights_only=True)``) and updates ``pretrain/zoo.yml`` with the game, its
action meanings, agent steps, final 100-episode score, sha256, command and commit.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import yaml

from rlzoo_transfer import yamlfile
from rlzoo_transfer.config import check_ranges, parse_overrides, progress_bar_wanted, read_yaml, seed_arg
from rlzoo_transfer.outputs import check_outputs

ZOO_DIR = Path(__file__).resolve().parent.parent / "pretrain"


def read_manifest_for_update(path: Path) -> dict:
    """``zoo.yml`` as a mapping to add a source to (``{}`` if absent), or a ConfigError saying how to mend it -
    checked before training too, so that a damaged manifest does not end hours of pretraining in an error."""
    from rlzoo_transfer.config import ConfigError
    from rlzoo_transfer.zoo import restore_advice

    if not path.exists():
        return {}
    def advice() -> str:   # git checkout only for pretrain/'s; asked only when the manifest is damaged
        return restore_advice(path, "move it away to start a new manifest")

    data = yamlfile.load(path, ConfigError, lambda: f"pretrain adds its source to it: {advice()}")
    if data is None:
        return {}
    if not isinstance(data, dict) or not isinstance(data.get("sources", {}), dict):
        raise ConfigError(f"{path} is not a zoo manifest (a mapping with `sources: {{Game: entry}}`); {advice()}")
    return data


def export_source(run_dir: Path, zoo_dir: Path, command: str) -> dict:
    """Write ``<zoo_dir>/<Game>.pt`` from a finished run and record it in ``<zoo_dir>/zoo.yml`` (atomically)."""
    from rlzoo_transfer.atomic import save_torch
    from rlzoo_transfer.provenance import git_commit
    from rlzoo_transfer.rl.callbacks import write_atomic
    from rlzoo_transfer.rl.der import DER
    from rlzoo_transfer.zoo import sha256

    commit_now = git_commit()   # before this export changes the tree
    config = yaml.safe_load((run_dir / "config.yml").read_text())
    final = json.loads((run_dir / "final.json").read_text())
    model = DER.load(run_dir / "model.zip", device="cpu")
    state = {k: v.detach().clone().cpu() for k, v in model.policy.q_net.state_dict().items()}
    zoo_dir.mkdir(parents=True, exist_ok=True)
    game = config["game"]
    out = zoo_dir / f"{game}.pt"
    save_torch(state, out)
    entry = {
        "game": game, "file": out.name, "sha256": sha256(out), "actions": config["actions"],
        "network": "DERNetwork", "n_atoms": config["hyperparams"]["n_atoms"],
        "hidden": config["hyperparams"]["hidden"], "agent_steps": final["steps"],
        "final_eval": {"mean": round(final["mean"], 2), "std": round(final["std"], 2),
                       "n_episodes": final["n_episodes"]},
        "hyperparams": config["hyperparams"], "n_envs": config["n_envs"], "device": config["device"],
        "versions": config["versions"], "command": config.get("command") or command, "commit": config["commit"],
        "created": time.strftime("%Y-%m-%d"),
    }
    if command != entry["command"]:   # finished by a later --resume: both commands, both commits
        entry["resumed_with"] = {"command": command, "commit": commit_now}
    manifest = zoo_dir / "zoo.yml"
    zoo = read_manifest_for_update(manifest)
    zoo.setdefault("sources", {})[game] = entry
    write_atomic(manifest, yaml.safe_dump(zoo, sort_keys=False))
    # the run's small files travel with the checkpoint, so its score can be traced
    (zoo_dir / game).mkdir(exist_ok=True)
    for name in ("evaluations.csv", "final.json", "config.yml"):
        if (run_dir / name).exists():
            (zoo_dir / game / name).write_bytes((run_dir / name).read_bytes())
    return entry


DEFAULT_PRETRAIN_STEPS = 1_000_000   # agent steps of a source where --steps is not given (nor recorded, on --resume)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m rlzoo_transfer.pretrain", description=__doc__.split("\n\n")[0])
    p.add_argument("--game", required=True)
    p.add_argument("--steps", type=int, default=None,
                   help="agent steps (default 1M; with --resume, the run's planned total, config.yml's steps)")
    p.add_argument("--n-envs", type=int, default=64, help="games played in parallel")
    p.add_argument("--seed", type=seed_arg, default=0)
    p.add_argument("--eval-freq", type=int, default=250_000)
    p.add_argument("--eval-episodes", type=int, default=8)
    p.add_argument("--final-eval-episodes", type=int, default=100)
    p.add_argument("--checkpoint-freq", type=int, default=None, help="agent steps between checkpoints "
                   "(default: every evaluation; 0 = none)")
    p.add_argument("--max-minutes", type=float, default=None,
                   help="wall-clock budget: at the limit, finish (final evaluation, export) at the step reached")
    p.add_argument("--log-dir", default="runs/pretrain")
    p.add_argument("--zoo-dir", default=str(ZOO_DIR))
    p.add_argument("-p", "--hyperparams", nargs="+", action="extend", default=[], metavar="KEY=VALUE")
    p.add_argument("--device", default="auto", help="torch device: auto (default: cuda if there is one), cpu, cuda:N")
    p.add_argument("--threads", type=int, default=0,
                   help="torch CPU threads (default: torch's, one per core - or the run's share of the "
                   "cores while other training processes run)")
    p.add_argument("--resume", action="store_true")
    p.add_argument("--no-progress", action="store_true",
                   help="a progress line a minute instead of the bar (the default when stderr is not a terminal)")
    args = p.parse_args(argv)   # before the RL stack's imports: --help and a usage error are instant
    check_outputs(p, args, folders=("log_dir", "zoo_dir"))
    from rlzoo_transfer.config import ConfigError, check_threads, load_config, resolve_device
    from rlzoo_transfer.games import UnknownGameError, resolve_game
    from rlzoo_transfer.run import (RunError, RunIncomplete, RunSpec, command_line, interrupted, planned_steps,
                                    run_folder, run_training, write_refused)
    from rlzoo_transfer.threads import threads_chosen

    command = command_line("python -m rlzoo_transfer.pretrain", argv)
    spec = None
    try:
        import torch

        check_threads(args.threads)
        if args.threads > 0:
            torch.set_num_threads(args.threads)
        game, _ = resolve_game(args.game)
        # --n-envs 0 crashed the interpreter (a segfault in the vector env); --checkpoint-freq 0 = no checkpoints
        check_ranges(args, positive=("steps", "n_envs", "eval_freq", "eval_episodes", "final_eval_episodes",
                                     "max_minutes"), non_negative=("checkpoint_freq",))
        pre = read_yaml(Path(__file__).resolve().parent.parent / "agents" / "pretrain.yml")
        hyper = {**pre, **parse_overrides(args.hyperparams)}
        if "gradient_steps" not in hyper:   # Rainbow's 1 update per 4 agent steps (agents/pretrain.yml)
            hyper["gradient_steps"] = max(1, args.n_envs // 4)
        resolved = load_config(None, hyper)  # validates the keys before any work
        if resolved["buffer_size"] // args.n_envs < resolved["n_steps"]:   # the replay is split over the envs
            raise ConfigError(f"--n-envs {args.n_envs} splits buffer_size={resolved['buffer_size']} into "
                              f"{resolved['buffer_size'] // args.n_envs} transitions per env, fewer than "
                              f"n_steps={resolved['n_steps']}: lower --n-envs or raise -p buffer_size")
        read_manifest_for_update(Path(args.zoo_dir) / "zoo.yml")   # and the manifest the export will update
        spec = RunSpec(game=game, method="scratch", seed=args.seed, steps=args.steps, eval_freq=args.eval_freq,
                       eval_episodes=args.eval_episodes, final_eval_episodes=args.final_eval_episodes,
                       log_dir=args.log_dir, hyperparams=hyper, device=resolve_device(args.device), resume=args.resume,
                       n_envs=args.n_envs, progress_bar=progress_bar_wanted(args.no_progress),
                       checkpoint_freq=args.checkpoint_freq,
                       max_minutes=args.max_minutes, finish_on_time_limit=True,
                       eval_envs=min(32, args.n_envs), eval_at_start=False, command=command,
                       share_cores=not threads_chosen(args.threads))
        planned_steps(spec, default=DEFAULT_PRETRAIN_STEPS)
        run_dir = run_training(spec)
        entry = export_source(run_dir, Path(args.zoo_dir), command)
    except (ConfigError, UnknownGameError, RunError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except RunIncomplete as e:  # SIGINT / SIGTERM during training: checkpointed at the step reached
        print(str(e), file=sys.stderr)
        return e.exit_status
    except KeyboardInterrupt:  # a second Ctrl-C, or one before training began
        return interrupted([run_folder(spec)] if spec else [])
    except OSError as e:  # a full disk, say: the files written so far are complete
        return write_refused(e, [run_folder(spec)] if spec else [])
    print(f"{game}: {entry['agent_steps']} agent steps, final score {entry['final_eval']['mean']} "
          f"-> {Path(args.zoo_dir) / entry['file']}")
    from rlzoo_transfer.run import summarize_after_run

    report = summarize_after_run(run_dir)
    if report is not None:
        print(f"report: {report}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
