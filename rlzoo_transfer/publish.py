"""Copy the small, publishable files of runs into ``eval/runs/``: ``python -m rlzoo_transfer.publish runs/``.

Per run folder ``<Game>/<method>/seed<k>/``: config.yml, evaluations.csv, final.json (only finished runs have it),
gates.csv, pathway.csv, flow.csv - never checkpoints, models or tensorboard logs.  Then
``python -m rlzoo_transfer.curves eval/runs --out eval/`` draws the published picture.
"""
from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path
from typing import NamedTuple

from rlzoo_transfer.outputs import check_outputs
from rlzoo_transfer.stop import one_line_interrupt

FILES = ("config.yml", "evaluations.csv", "final.json", "gates.csv", "pathway.csv", "flow.csv")


class Published(NamedTuple):
    copied: list[Path]   # run folders under dst_root brought up to date
    kept: list[Path]     # finished published runs left alone: their source under src_root has no final.json


def publish(src_root: Path, dst_root: Path, finished_only: bool = False, withdraw: bool = False) -> Published:
    """Copy FILES of every ``*/*/seed*/`` under ``src_root`` to the same place under ``dst_root``.

    ``finished_only``: leave out runs without ``final.json`` that are not published yet.
    A published *finished* run whose source has no ``final.json`` (restarted, still running, or a run that failed at
    its start in the same folder) is kept as published unless ``withdraw``: then the unfinished files replace it and
    the stale ``final.json`` is removed.  Keeping is the default because a failed start can look exactly like a
    restart, and a withdrawn final score is work lost until the run is repeated."""
    copied, kept = [], []
    for run in sorted(src_root.glob("*/*/seed*")):
        if not (run / "evaluations.csv").exists():
            continue
        dst = dst_root / run.relative_to(src_root)
        unfinished = not (run / "final.json").exists()
        if finished_only and unfinished and not dst.exists():
            continue
        if unfinished and (dst / "final.json").exists() and not withdraw:
            kept.append(dst)
            continue
        dst.mkdir(parents=True, exist_ok=True)
        for name in FILES:
            if (run / name).exists():
                tmp = dst / (name + ".tmp")
                shutil.copyfile(run / name, tmp)
                tmp.replace(dst / name)
            elif (dst / name).exists() and name == "final.json":
                (dst / name).unlink()  # withdraw: the source run is not finished any more
        copied.append(dst)
    return Published(copied, kept)


@one_line_interrupt
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m rlzoo_transfer.publish", description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="?", default="runs")
    p.add_argument("--out", default="eval/runs",
                   help="where the run folders go (default: eval/runs, the repository's published runs)")
    p.add_argument("--finished", action="store_true",
                   help="leave out runs still in progress (no final.json) that are not published yet")
    p.add_argument("--withdraw", action="store_true",
                   help="replace a published finished run by its unfinished source (restarted) and remove its "
                        "final.json; without it such a run is kept as published, with a warning")
    args = p.parse_args(argv)
    check_outputs(p, args, folders=("out",))
    src = Path(args.runs)
    if not src.is_dir():
        print(f"error: no run folder {src}", file=sys.stderr)
        return 2
    out = Path(args.out)
    runs, kept = publish(src, out, finished_only=args.finished, withdraw=args.withdraw)
    for dst in kept:
        print(f"warning: kept {dst} as published (finished): {src / dst.relative_to(out)} has no final.json "
              "(restarted, still running, or failed at its start); pass --withdraw to publish it in its place",
              file=sys.stderr)
    if not runs and not kept:
        what = "finished run folders (<Game>/<method>/seed<k>/ with final.json)" if args.finished else \
            "run folders (<Game>/<method>/seed<k>/ with evaluations.csv)"
        print(f"error: no {what} under {src}", file=sys.stderr)
        return 1
    for run in runs:
        print(f"{run} ({'finished' if (run / 'final.json').exists() else 'incomplete'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
