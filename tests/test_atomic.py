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


REFUSED_WRITES = """
import errno, resource, signal, sys, torch
from pathlib import Path
from rlzoo_transfer.atomic import naming_the_file, save_torch
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)   # a write past the limit fails with EFBIG instead of killing us
resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
big, folder = {"w": torch.zeros(100_000)}, Path(sys.argv[1])
for name, write in [("save_torch.pt", lambda p: save_torch(big, p)),
                    ("file_object.pt", lambda p: torch.save(big, open(p, "wb")))]:
    path = folder / name
    try:
        with naming_the_file(path):
            write(path)
    except OSError as e:
        print(name, errno.errorcode[e.errno], e.filename == str(path))
"""


def test_a_refused_torch_save_is_an_oserror_naming_the_file(tmp_path):
    """torch.save reports a full disk as a RuntimeError (through a path: no errno at all); the writers name it."""
    import subprocess
    import sys

    (tmp_path / "save_torch.pt").write_text("the previous weights\n")
    out = subprocess.run([sys.executable, "-c", REFUSED_WRITES, str(tmp_path)], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split("\n")[:2] == ["save_torch.pt EFBIG True", "file_object.pt EFBIG True"]
    assert (tmp_path / "save_torch.pt").read_text() == "the previous weights\n"   # the old file stays whole
    assert not [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_save_torch_round_trips_and_hashes_the_same_under_any_name(tmp_path):
    torch = pytest.importorskip("torch")
    from rlzoo_transfer.atomic import save_torch

    weights = {"w": torch.arange(6.0).reshape(2, 3)}
    save_torch(weights, tmp_path / "a.pt")
    save_torch(weights, tmp_path / "sub" / "b.pt")
    assert (tmp_path / "a.pt").read_bytes() == (tmp_path / "sub" / "b.pt").read_bytes()
    assert torch.equal(torch.load(tmp_path / "a.pt", weights_only=True)["w"], weights["w"])

