"""rlzoo_transfer.atomic: results replace their old versions whole, or not at all."""
from __future__ import annotations

import os

import pytest

from rlzoo_transfer.atomic import replacing, write_atomic


def test_write_atomic_replaces_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "sub" / "report.md"
    write_atomic(path, "old\n")
    write_atomic(path, "new\n")
    assert path.read_text() == "new\n"
    assert sorted(p.name for p in path.parent.iterdir()) == ["report.md"]
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask   # as open(path, "w") would make it, not mkstemp's 0600


def test_failed_writer_keeps_the_old_file(tmp_path):
    path = tmp_path / "curves.csv"
    path.write_text("complete\n")
    with pytest.raises(RuntimeError):
        with replacing(path) as tmp, open(tmp, "w") as fh:
            fh.write("half a ")
            raise RuntimeError("killed mid-write")
    assert path.read_text() == "complete\n"
    assert [p.name for p in tmp_path.iterdir()] == ["curves.csv"]


def test_binary_writers_through_a_temporary_path(tmp_path):
    torch = pytest.importorskip("torch")
    path = tmp_path / "model.pt"
    with replacing(path) as tmp:
        torch.save({"w": torch.arange(3)}, tmp)
    assert torch.load(path, weights_only=True)["w"].tolist() == [0, 1, 2]
