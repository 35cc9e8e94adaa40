"""The vision CLIs answer ``--help`` and refuse a mistyped option before importing torch (vision/options.py)."""
import subprocess
import sys

import pytest

from rlzoo_transfer.provenance import PROJECT_ROOT

LOADED = "print(sorted(m for m in ('scipy', 'torch', 'torchvision') if m in sys.modules))"


@pytest.mark.parametrize("module", ["select", "vision.classify", "vision.landmarks", "vision.experiment"])
def test_help_and_usage_errors_do_not_load_torch(module):
    """Each of these took ~3 s (select and experiment ~5 s) for ``--help`` or a typo, loading torch (and scipy) at
    their module tops; their parsers now live in torch-free modules and the runs import torch after the parse."""
    code = (f"import sys, contextlib, io\nimport rlzoo_transfer.{module} as cli\n"
            "err, out, codes = io.StringIO(), io.StringIO(), []\n"
            "for argv in (['--help'], ['--data', 'd', '--zoo', 'a.pt', '--bogus', '1']):\n"
            "    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):\n"
            "        try:\n"
            "            cli.main(argv)\n"
            "        except SystemExit as e:\n"
            "            codes.append(e.code)\n"
            f"{LOADED}\nprint(codes)\nprint(out.getvalue() + err.getvalue(), file=sys.stderr)")
    proc = subprocess.run([sys.executable, "-c", code], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split("\n")[:2] == ["[]", "[0, 2]"], proc.stdout + proc.stderr
    assert any(f in proc.stderr for f in ("--method", "--scores", "--shots"))      # the help was printed
    assert ": error: " in proc.stderr                                               # the usage error, one line
    assert "Traceback" not in proc.stderr
