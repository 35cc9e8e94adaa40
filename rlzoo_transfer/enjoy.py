"""Watch and re-evaluate a trained policy (rl-baselines3-zoo's ``enjoy``).

    python -m rlzoo_transfer.enjoy runs/Alien/zoo/seed0 [--episodes 10] [--seed 0] [--gif alien.gif]
    python -m rlzoo_transfer.enjoy runs/Alien/zoo/seed1 --checkpoint          # an unfinished run's last checkpoint
    python -m rlzoo_transfer.enjoy --source Seaquest --gif seaquest.gif      # a zoo source on its own game

A run folder's policy is rebuilt from its ``config.yml`` (game, method, resolved hyperparameters; zoo methods read
the sources of ``pretrain/`` for the network's shape) and its weights are read from ``model.zip`` (or
``checkpoint/model.zip``): only the ``policy.pth`` member, with ``torch.load(weights_only=True)``, so a run folder
from elsewhere is data, never code (SB3's own ``DER.load`` would unpickle the archive's objects).  A source comes
from the zoo manifest, its sha256 checked (:func:`rlzoo_transfer.zoo.load_source`).

Evaluation is the Atari 100k protocol of training (:func:`rlzoo_transfer.rl.evaluation.evaluate`: whole games,
unclipped returns, epsilon 0.001, noise off), seeded by ``--seed``: the returns are reproducible, and a seed other
than the run's own gives episodes its ``final.json`` did not see.  ``--gif`` records one more episode as the agent
sees it (the newest of its four stacked 84x84 frames, enlarged ``--scale`` times, 15 agent steps per second: real
time at frame skip 4), at most ``--gif-steps`` steps.  ``--out`` writes the returns as JSON.  Every file is written
atomically.

Exit status: 0 ok, 2 bad input (no such run folder, no model, an archive that is not a model of this run's network,
an unknown source).
"""
from __future__ import annotations

import argparse
import io
import json
import sys
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np

from rlzoo_transfer import yamlfile
from rlzoo_transfer.atomic import replacing, write_atomic
from rlzoo_transfer.config import seed_arg
from rlzoo_transfer.outputs import check_outputs
from rlzoo_transfer.statedict import first_line, mismatch
from rlzoo_transfer.stop import one_line_interrupt

if TYPE_CHECKING:
    import torch


class EnjoyError(ValueError):
    """Input that cannot be played; the message says what to do."""


def read_policy_weights(zip_path: Path) -> dict[str, torch.Tensor]:
    """The policy's state_dict inside an SB3 ``model.zip`` (member ``policy.pth``), read tensors-only."""
    import torch

    try:
        with zipfile.ZipFile(zip_path) as archive:
            data = archive.read("policy.pth")
    except FileNotFoundError:
        raise EnjoyError(f"{zip_path} does not exist") from None
    except (zipfile.BadZipFile, KeyError) as e:
        raise EnjoyError(f"{zip_path} is not an SB3 model archive with a policy.pth ({e})") from None
    try:
        state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as e:  # a truncated member, or one that holds more than tensors
        raise EnjoyError(f"cannot read the policy in {zip_path} as tensors only ({type(e).__name__}: "
                         f"{first_line(e)})") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise EnjoyError(f"the policy.pth in {zip_path} is not a state_dict of tensors")
    return state


def _build_policy(game: str, method: str, source: str | None, hyperparams: dict, device: str):
    """A DERPolicy with the method's freshly built network for ``game`` (weights to be loaded by the caller)."""
    from rlzoo_transfer.config import load_config
    from rlzoo_transfer.envs import make_env
    from rlzoo_transfer.rl.registry import get_method
    from rlzoo_transfer.run import RunSpec, build_model

    config = load_config(get_method(method).config_file, hyperparams)
    config["buffer_size"] = max(int(config["batch_size"]), int(config["n_steps"]) + 1)  # playing needs no replay
    env = make_env(game, 1)
    try:
        model = build_model(RunSpec(game=game, method=method, source=source, device=device), config, env, None)
    finally:
        env.close()
    return model.policy


def policy_for_run(run_dir: Path, checkpoint: bool = False, device: str = "cpu"):
    """(policy, game, label) of a run folder, from its config.yml and (checkpoint/)model.zip."""
    from rlzoo_transfer.config import ConfigError

    config_path = run_dir / "config.yml"
    if not config_path.is_file():
        raise EnjoyError(f"{run_dir} is not a run folder: it has no config.yml (a run folder is "
                         "<log-dir>/<Game>/<method>/seed<k>/, as written by python -m rlzoo_transfer.train)")
    config = yamlfile.load(config_path, EnjoyError, "the policy cannot be rebuilt without it") or {}
    if not isinstance(config, dict):
        raise EnjoyError(f"{config_path} is not a run's config (a mapping with game, method, hyperparams)")
    missing = [k for k in ("game", "method", "hyperparams") if k not in config]
    if missing:
        raise EnjoyError(f"{config_path} lacks {', '.join(missing)}")
    zip_path = run_dir / "checkpoint" / "model.zip" if checkpoint else run_dir / "model.zip"
    if not zip_path.is_file():
        if not checkpoint and (run_dir / "final.json").is_file():   # e.g. a published copy under eval/runs/
            hint = ("the run finished, but its weights are not in this folder (published runs keep only configs, "
                    "curves and scores): play the run folder it trained in, e.g. runs/<Game>/<method>/seed<k>")
        elif not checkpoint:
            hint = "the run has not finished: add --checkpoint to play its last checkpoint"
        else:
            hint = "the run has no checkpoint (yet)"
        raise EnjoyError(f"{zip_path} does not exist: {hint}")
    state = read_policy_weights(zip_path)
    try:
        policy = _build_policy(config["game"], config["method"], config.get("source"), config["hyperparams"],
                               device)
    except ConfigError as e:
        raise EnjoyError(f"{config_path} cannot be rebuilt: {e}") from None
    try:
        policy.load_state_dict(state)
    except RuntimeError as e:   # torch's message is a line per key: say in one what does not fit
        raise EnjoyError(f"{zip_path} does not fit the network of {config_path} (method {config['method']}): "
                         f"{mismatch(e)}") from None
    return policy, config["game"], str(zip_path)


def policy_for_source(game: str, zoo_dir: Path | None = None, device: str = "cpu"):
    """(policy, game, label) of a zoo source playing its own game."""
    from rlzoo_transfer.zoo import DEFAULT_ZOO, check_architecture, load_source

    zoo_dir = zoo_dir or DEFAULT_ZOO
    src = load_source(game, zoo_dir, flag="--zoo-dir DIR")   # enjoy's flag in the hint, not train's -p zoo_dir=
    policy = _build_policy(src.game, "scratch", None, {"hidden": int(src.entry.get("hidden", 256)),
                                                       "n_atoms": int(src.entry.get("n_atoms", 51))}, device)
    check_architecture(src, policy.q_net)
    policy.q_net.load_state_dict(src.state_dict)
    policy.sync_target()
    return policy, src.game, f"source {src.game} ({Path(zoo_dir) / src.entry['file']})"


def record_gif(policy, game: str, path: Path, seed: int, epsilon: float = 0.001, max_steps: int = 3000,
               scale: int = 2) -> dict:
    """Play one episode as in evaluation and write what the agent sees as an animated GIF.

    The env and the epsilon-greedy actions are seeded exactly as ``evaluate(policy, game, 1, seed, epsilon)``: an
    episode that ends within ``max_steps`` is that evaluation's episode, with the same return.

    :return: ``dict(frames, steps, episode_return, ended)``; ``ended`` False when ``max_steps`` cut the episode
    """
    from PIL import Image

    from rlzoo_transfer.envs import make_env
    from rlzoo_transfer.rl.evaluation import epsilon_greedy

    rng = np.random.default_rng(seed)
    env = make_env(game, 1, seed=int(rng.integers(2**31 - 1)))
    was_training = policy.training
    policy.set_training_mode(False)
    frames, total, ended = [], 0.0, False
    try:
        obs = env.reset()
        for _ in range(max_steps):
            frames.append(obs[0, -1])
            obs, reward, done, _ = env.step(epsilon_greedy(policy, obs, epsilon, rng, env.action_space.n))
            total += float(reward[0])
            if done[0]:
                ended = True
                break
    finally:
        env.close()
        policy.set_training_mode(was_training)
    size = (frames[0].shape[1] * scale, frames[0].shape[0] * scale)
    images = [Image.fromarray(f).resize(size, Image.NEAREST) for f in frames]
    with replacing(path) as tmp:
        images[0].save(tmp, format="GIF", save_all=True, append_images=images[1:], duration=67, loop=0)
    return dict(frames=len(images), steps=len(frames), episode_return=total, ended=ended)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m rlzoo_transfer.enjoy", description=__doc__.split("\n\n")[0])
    p.add_argument("run", nargs="?", type=Path, help="a run folder, e.g. runs/Alien/zoo/seed0")
    p.add_argument("--source", help="play a zoo source on its own game instead, e.g. Seaquest")
    p.add_argument("--zoo-dir", type=Path, default=None, help="the zoo of --source (default: pretrain/)")
    p.add_argument("--checkpoint", action="store_true", help="the run's checkpoint/model.zip (an unfinished run)")
    p.add_argument("--episodes", type=int, default=10, help="evaluation episodes (default 10; 0 = none)")
    p.add_argument("--seed", type=seed_arg, default=0, help="evaluation seed (default 0)")
    p.add_argument("--epsilon", type=float, default=0.001, help="random-action probability (default 0.001)")
    p.add_argument("--gif", type=Path, default=None, help="record one more episode as this animated GIF")
    p.add_argument("--gif-steps", type=int, default=3000, help="at most this many agent steps in the GIF")
    p.add_argument("--scale", type=int, default=2, help="GIF enlargement of the 84x84 frames (default 2)")
    p.add_argument("--out", type=Path, default=None, help="write the returns as JSON to this file")
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (default: torch's; 1 when other jobs share the cores)")
    return p


@one_line_interrupt
def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; 0 ok, 2 bad input."""
    parser = build_parser()
    args = parser.parse_args(argv)   # before torch and the RL stack: --help and a usage error are instant
    check_outputs(parser, args, files=("out", "gif"))
    import torch

    from rlzoo_transfer.config import ConfigError, check_ranges, check_threads, resolve_device
    from rlzoo_transfer.games import UnknownGameError
    from rlzoo_transfer.rl.evaluation import evaluate
    from rlzoo_transfer.rl.registry import UnknownMethodError
    from rlzoo_transfer.zoo import ZooError

    try:
        check_threads(args.threads, minimum=1)
        if args.threads is not None:
            torch.set_num_threads(args.threads)
        args.device = resolve_device(args.device)
        if (args.run is None) == (args.source is None):
            raise EnjoyError("give a run folder or --source GAME (one of them)")
        check_ranges(args, positive=("gif_steps", "scale"), non_negative=("episodes",), error=EnjoyError)
        if not 0.0 <= args.epsilon <= 1.0:
            raise EnjoyError(f"out of range: --epsilon {args.epsilon} (must be in [0, 1])")
        if args.episodes == 0 and args.gif is None:
            raise EnjoyError("nothing to do: --episodes 0 and no --gif")
        if args.run is not None:
            if not args.run.is_dir():
                raise EnjoyError(f"no run folder {args.run}")
            policy, game, label = policy_for_run(args.run, args.checkpoint, args.device)
        else:
            policy, game, label = policy_for_source(args.source, args.zoo_dir, args.device)
    except (EnjoyError, ZooError, ConfigError, UnknownGameError, UnknownMethodError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(label)
    result = {"policy": label, "game": game, "seed": args.seed, "epsilon": args.epsilon}
    if args.episodes:
        returns = evaluate(policy, game, args.episodes, seed=args.seed, epsilon=args.epsilon)
        mean, std = float(np.mean(returns)), float(np.std(returns))
        se = f" (s.e. {np.std(returns, ddof=1) / np.sqrt(len(returns)):.1f})" if len(returns) > 1 else ""
        print(f"{game}: {len(returns)} episodes (seed {args.seed}, epsilon {args.epsilon}): mean {mean:.1f}{se}, "
              f"min {min(returns):.0f}, max {max(returns):.0f}")
        print("returns: " + " ".join(f"{r:.0f}" for r in returns))
        result.update(returns=[float(r) for r in returns], mean=mean, std=std)
        final = args.run / "final.json" if args.run is not None else None
        if final is not None and final.is_file():
            done = json.loads(final.read_text())
            print(f"the run's final.json: {done['mean']:.1f} over {done['n_episodes']} episodes")
    if args.gif is not None:
        gif = record_gif(policy, game, args.gif, seed=args.seed + 1, epsilon=args.epsilon,
                         max_steps=args.gif_steps, scale=args.scale)
        print(f"gif: {args.gif} ({gif['frames']} frames, return {gif['episode_return']:.0f}, "
              f"{'episode ended' if gif['ended'] else f'cut at {args.gif_steps} steps'})")
        result["gif"] = {"path": str(args.gif), **gif}
    if args.out is not None:
        write_atomic(args.out, json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
