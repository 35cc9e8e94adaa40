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

from rlzoo_transfer.outputs import check_outputs
from rlzoo_transfer.stop import one_line_interrupt

FILES = ("config.yml", "evaluations.csv", "final.json", "gates.csv", "pathway.csv", "flow.csv")


def publish(src_root: Path, dst_root: Path, finished_only: bool = False) -> list[Path]:
    """Copy FILES of every ``*/*/seed*/`` under ``src_root`` to the same place under ``dst_root``.
    ``finished_only``: leave out runs without ``final.json`` that are not published yet (a published run that was
    restarted is still updated, so that its stale final score is withdrawn)."""
    copied = []
    for run in sorted(src_root.glob("*/*/seed*")):
        if not (run / "evaluations.csv").exists():
            continue
        dst = dst_root / run.relative_to(src_root)
        if finished_only and not (run / "final.json").exists() and not dst.exists():
            continue
        dst.mkdir(parents=True, exist_ok=True)
        for name in FILES:
            if (run / name).exists():
                tmp = dst / (name + ".tmp")
                shutil.copyfile(run / name, tmp)
                tmp.replace(dst / name)
            elif (dst / name).exists() and name == "final.json":
                (dst / name).unlink()  # the source run is not finished (any more): don't publish a stale score
        copied.append(dst)
    return copied


@one_line_interrupt
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m rlzoo_transfer.publish", description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="?", default="runs")
    p.add_argument("--out", default="eval/runs")
    p.add_argument("--finished", action="store_true",
                   help="leave out runs still in progress (no final.json) that are not published yet")
    args = p.parse_args(argv)
    check_outputs(p, args, folders=("out",))
    src = Path(args.runs)
    if not src.is_dir():
        print(f"error: no run folder {src}", file=sys.stderr)
        return 2
    out = Path(args.out)
    runs = publish(src, out, finished_only=args.finished)
    if not runs:
        what = "finished run folders (<Game>/<method>/seed<k>/ with final.json)" if args.finished else \
            "run folders (<Game>/<method>/seed<k>/ with evaluations.csv)"
        print(f"error: no {what} under {src}", file=sys.stderr)
        return 1
    for run in runs:
        print(f"{run} ({'finished' if (run / 'final.json').exists() else 'incomplete'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
