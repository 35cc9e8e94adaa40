"""The command eval/vision.md records; the experiment is now
``python -m rlzoo_transfer.vision.experiment``."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rlzoo_transfer.vision.experiment import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
