"""Classification on real offline data (scikit-learn's digits): training works, every method runs, resume is
exact, bad input is one line and exit status 2."""
import json
import signal
import subprocess
import sys

import numpy as np
import pytest
import torch

import rlzoo_transfer.vision.classification as classification
from rlzoo_transfer.vision.classification import run_classification
from rlzoo_transfer.vision.classify import ClassifyConfig, main
from rlzoo_transfer.vision.data import (BatchStream, DataError, EvalTransform, ImageDataset, TenCropTransform,
                                        TrainTransform, digits_images, normalize, open_split,
                                        random_resized_crop_box, write_image_folder)
from rlzoo_transfer.vision.resnet import resnet_small
from rlzoo_transfer.vision.zoo import Ensemble, mean_softmax_log

torch.set_num_threads(1)
SMALL = dict(arch="small", width=8, image_size=8, crop_scale=(0.7, 1.0), crop_pct=1.0, tensorboard=False,
             progress=False, log_every=10)


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    root = tmp_path_factory.mktemp("digits")
    x, y = digits_images()
    idx = np.random.default_rng(0).permutation(len(y))
    write_image_folder(root, "train", x[idx[:700]], y[idx[:700]])
    write_image_folder(root, "test", x[idx[700:1000]], y[idx[700:1000]])
    return root


@pytest.fixture(scope="module")
def sources(digits, tmp_path_factory):
    """Three small checkpoints in torchvision format (random initialisations; only their keys matter here)."""
    root = tmp_path_factory.mktemp("zoo")
    paths = []
    for i in range(3):
        torch.manual_seed(i)
        p = root / f"src{i}.pt"
        torch.save(resnet_small(3 + i, width=8).state_dict(), p)       # different source heads: ignored
        paths.append(str(p))
    return paths


def test_digits_training_lowers_loss_and_beats_chance(digits, tmp_path):
    res = run_classification(ClassifyConfig(data=str(digits), method="scratch", iters=150, lr=0.05,
                                            out=str(tmp_path / "run"), **(SMALL | {"tensorboard": True})))
    assert res["final_loss"] < 0.5 * res["first_loss"]
    assert res["top1"] > 60.0, res["top1"]                                  # chance is 10%
    saved = json.loads((tmp_path / "run" / "results.json").read_text())
    assert saved["top1"] == res["top1"]
    assert list((tmp_path / "run" / "tb").glob("events.out.tfevents.*"))
    env = json.loads((tmp_path / "run" / "config.json").read_text())["environment"]
    assert "commit" in env and env["versions"]["torch"] and env["versions"]["rlzoo_transfer"]
    assert env["versions"]["python"] and "python" not in env  # recorded once, with the packages


@pytest.mark.parametrize("method", ["single", "zoo", "zoo-lite", "zoo-avg", "ensemble", "hub"])
def test_every_method_fine_tunes(digits, sources, tmp_path, method):
    zoo = sources[:1] if method == "single" else sources
    res = run_classification(ClassifyConfig(data=str(digits), zoo=zoo, method=method, iters=12, batch_size=16,
                                            out=str(tmp_path / method), **SMALL))
    assert 0.0 <= res["top1"] <= 100.0 and np.isfinite(res["final_loss"])
    if method == "zoo-lite":                                                # collapses to one network
        assert res["params_inference"] < res["params_train"] / 2
    if method == "ensemble":
        assert len(res["members_top1"]) == 3
    if method in ("zoo", "zoo-lite"):
        assert any(k.startswith("gate/layer1.0.conv1/") for k in res["gates"])


def test_official_zoo_recipe_options_reach_the_network(digits, tmp_path, monkeypatch, capsys):
    """--align-stages official and --bn-stats reset build the network they name and are recorded in the run."""
    out, zoo = tmp_path / "official", []
    for i in range(2):                                # sources with running statistics of their own
        torch.manual_seed(i)
        src = resnet_small(3, width=8)
        src.train()(torch.randn(16, 3, 8, 8) * (i + 2) + i)
        zoo.append(str(tmp_path / f"src{i}.pt"))
        torch.save(src.state_dict(), zoo[-1])
    argv = ["--data", str(digits), "--zoo", *zoo, "--method", "zoo", "--arch", "small", "--width", "8",
            "--image-size", "8", "--crop-pct", "1", "--iters", "3", "--batch-size", "8", "--out", str(out),
            "--no-progress", "--no-tensorboard", "--align-stages", "official", "--bn-stats", "reset"]
    built = {}
    real = classification.build_method

    def keep(*args, **kwargs):                     # the real builder; its network kept as built, before training
        net = real(*args, **kwargs)
        built["net"] = net
        built["running_var"] = [m.running_var.clone() for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)]
        return net

    monkeypatch.setattr(classification, "build_method", keep)
    assert main(argv) == 0
    net = built["net"]
    assert net.layer1[0].conv1.align is None and net.layer2[0].conv1.align is not None
    assert len(built["running_var"]) == 9 and all(torch.equal(v, torch.ones_like(v)) for v in built["running_var"])
    cfg = json.loads((out / "config.json").read_text())["config"]
    assert cfg["align_stages"] == "official" and cfg["bn_stats"] == "reset"
    capsys.readouterr()
    assert main(argv[:-2] + ["--bn-stats", "average", "--resume", "--iters", "4"]) == 2   # another network: refused
    assert "bn_stats" in capsys.readouterr().err
    assert main(argv[:-2] + ["--out", str(tmp_path / "average")]) == 0     # the default: the sources' average
    assert not any(torch.equal(v, torch.ones_like(v)) for v in built["running_var"])


def test_resume_after_a_crash_continues_exactly(digits, sources, tmp_path, monkeypatch):
    common = dict(data=str(digits), zoo=sources, method="zoo-lite", iters=8, batch_size=16, milestones=[3, 6],
                  save_every=4, **SMALL)
    straight = run_classification(ClassifyConfig(out=str(tmp_path / "a"), **common))
    calls = {"n": 0}
    real = classification.objective

    def crash_on_sixth(*args, **kwargs):                  # the process dies during iteration 6
        calls["n"] += 1
        if calls["n"] == 6:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(classification, "objective", crash_on_sixth)
    with pytest.raises(KeyboardInterrupt):
        run_classification(ClassifyConfig(out=str(tmp_path / "b"), **common))
    monkeypatch.setattr(classification, "objective", real)
    assert torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=True)["iteration"] == 4    # data only
    resumed = run_classification(ClassifyConfig(out=str(tmp_path / "b"), resume=True, **common))
    a = torch.load(tmp_path / "a" / "model.pt")
    b = torch.load(tmp_path / "b" / "model.pt")
    assert resumed["iterations"] == 8 and all(torch.equal(a[k], b[k]) for k in a)
    assert straight["top1"] == resumed["top1"]
    with pytest.raises(classification.UsageError, match="made with method='zoo-lite'"):
        run_classification(ClassifyConfig(out=str(tmp_path / "b"), resume=True, **(common | {"method": "zoo"})))
    # every training setting counts (the optimiser state comes from the checkpoint, so a new --lr would be recorded
    # in config.json but not used); a refusal leaves config.json as it was; how the run reports may change
    recorded = (tmp_path / "b" / "config.json").read_text()
    for change, named in (({"lr": 0.5}, "made with lr=0.01, this run has 0.5"),
                          ({"no_align": True}, "made with no_align=False, this run has True"),
                          ({"weight_decay": 1e-3}, "made with weight_decay=0.0")):
        with pytest.raises(classification.UsageError, match=named.replace("(", r"\(")):
            run_classification(ClassifyConfig(out=str(tmp_path / "b"), resume=True, **(common | change)))
        assert (tmp_path / "b" / "config.json").read_text() == recorded
    again = run_classification(ClassifyConfig(out=str(tmp_path / "b"), resume=True,
                                              **(common | {"log_every": 3, "threads": 1, "eval_every": 0})))
    assert again["iterations"] == 8
    # a checkpoint from before --nesterov existed was made without it: resuming with it is refused, not ignored
    ck = torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=True)
    del ck["config"]["nesterov"], ck["config"]["ten_crop"]
    torch.save(ck, tmp_path / "b" / "checkpoint.pt")
    with pytest.raises(classification.UsageError, match="made with nesterov=False, this run has True"):
        run_classification(ClassifyConfig(out=str(tmp_path / "b"), resume=True, **(common | {"nesterov": True})))
    assert run_classification(ClassifyConfig(out=str(tmp_path / "b"), resume=True, **common))["iterations"] == 8


def test_csv_list_format(digits, tmp_path):
    rows = ["path,label,split"]
    for split in ("train", "test"):
        for c in range(10):
            for p in sorted((digits / split / str(c)).glob("*.png"))[:6]:
                rows.append(f"{p.relative_to(digits)},{c},{split}")
    (digits / "list.csv").write_text("\n".join(rows) + "\n")     # paths relative to the CSV's folder
    tr = open_split(digits / "list.csv", "train")
    assert len(tr) == 60 and tr.classes == sorted(tr.classes, key=int)
    res = run_classification(ClassifyConfig(data=str(digits / "list.csv"), method="scratch", iters=3,
                                            batch_size=16, out=str(tmp_path / "run"), **SMALL))
    assert res["iterations"] == 3
    # a list that is not text, or not CSV: the file named, not a decoder's message
    (tmp_path / "binary.csv").write_bytes(bytes(range(128, 256)))
    (tmp_path / "huge.csv").write_text("a.png,0,train\n" + "x" * 200_000 + ",1,test\n")   # csv.Error, no ValueError
    for name, message in (("binary.csv", "not a UTF-8 text file"), ("huge.csv", "not a CSV file")):
        with pytest.raises(DataError, match=f"{name}: {message}"):
            open_split(tmp_path / name, "train")


def test_ten_crop_views_and_their_averaged_prediction(digits, tmp_path):
    img = torch.arange(3 * 12 * 20, dtype=torch.float32).view(3, 12, 20) % 256     # not square, all pixels differ
    views = TenCropTransform(8, crop_pct=0.8)(img)                                # shorter side 10: (10, 17)
    assert views.shape == (10, 3, 8, 8)
    resized = EvalTransform(8, crop_pct=0.8).resized(img)
    assert resized.shape == (3, 10, 17)
    corners = [(0, 0), (0, 9), (2, 0), (2, 9)]                                    # top-left, top-right, ...
    for i, (top, left) in enumerate(corners):
        torch.testing.assert_close(views[i], normalize(resized[:, top:top + 8, left:left + 8]))
    torch.testing.assert_close(views[4], EvalTransform(8, crop_pct=0.8)(img))    # the centre view
    for i, mirror_of in enumerate([1, 0, 3, 2]):   # the mirror's corners: its top-left = mirrored top-right, ...
        torch.testing.assert_close(views[5 + i], views[mirror_of].flip(-1), atol=1e-5, rtol=0)
    torch.testing.assert_close(views[9], EvalTransform(8, crop_pct=0.8)(img.flip(-1)))   # the mirror's centre
    assert not torch.allclose(views[0], views[3])
    split = open_split(digits, "test")
    ds = ImageDataset(split, TenCropTransform(8, crop_pct=0.875))
    torch.manual_seed(0)
    model = resnet_small(10, width=8).eval()
    with torch.no_grad():
        outs = torch.stack([model(ds[i][0]).mean(0) for i in range(len(ds))])     # mean over the 10 views
    labels = torch.tensor([ds[i][1] for i in range(len(ds))])
    got = classification.evaluate_classifier(model, ds, torch.device("cpu"), batch_size=7)
    assert got["top1"] == pytest.approx(100.0 * float((outs.argmax(-1) == labels).float().mean()))
    assert got["nll"] == pytest.approx(float(torch.nn.functional.cross_entropy(outs, labels)), rel=1e-5)
    torch.manual_seed(1)
    ens = Ensemble([model, resnet_small(10, width=8)], mean_softmax_log).eval()   # soft voting over members x views
    with torch.no_grad():
        probs = torch.stack([torch.stack([m(ds[i][0]).softmax(-1) for m in ens.models]).mean((0, 1))
                             for i in range(len(ds))])
    got = classification.evaluate_classifier(ens, ds, torch.device("cpu"), batch_size=7)
    assert got["nll"] == pytest.approx(float(torch.nn.functional.nll_loss(probs.log(), labels)), rel=1e-5)
    res = run_classification(ClassifyConfig(data=str(digits), method="scratch", iters=3, batch_size=16,
                                            nesterov=True, ten_crop=True, out=str(tmp_path / "run"),
                                            **(SMALL | {"crop_pct": 0.875})))
    ck = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)
    assert ck["optimizer"]["param_groups"][0]["nesterov"] is True
    saved = json.loads((tmp_path / "run" / "config.json").read_text())["config"]
    assert saved["ten_crop"] is True and 0.0 <= res["top1"] <= 100.0


def test_transforms_and_stream(digits):
    for _ in range(50):
        top, left, h, w = random_resized_crop_box(10, 14)
        assert 0 <= top and 0 <= left and top + h <= 10 and left + w <= 14 and h > 0 and w > 0
    split = open_split(digits, "train")
    x, y = ImageDataset(split, TrainTransform(12, (0.5, 1.0), hflip=True))[0]
    assert x.shape == (3, 12, 12) and isinstance(y, int)
    assert ImageDataset(split, EvalTransform(16))[3][0].shape == (3, 16, 16)
    ds = list(range(10))
    s1 = BatchStream(ds, 4, seed=1, collate_fn=list)
    first = [next(s1) for _ in range(5)]                 # 2 batches per epoch (the 2 leftovers dropped)
    s2 = BatchStream(ds, 4, seed=1, collate_fn=list)
    [next(s2) for _ in range(3)]
    s3 = BatchStream(ds, 4, seed=1, collate_fn=list)
    s3.load_state(s2.state())
    assert [next(s3) for _ in range(2)] == first[3:]
    assert len(set(first[0]) | set(first[1])) == 8


def test_ctrl_c_checkpoints_at_the_iteration_reached_then_resume_finishes(digits, sources, tmp_path, capsys,
                                                                           monkeypatch):
    """SIGINT during a fine-tuning run (it was a KeyboardInterrupt traceback that lost the iterations since the last
    --save-every checkpoint): the iteration in progress completes, a checkpoint is written there, exit 130 with one
    line; --resume then ends with exactly the uninterrupted run's weights."""
    argv = ["--data", str(digits), "--zoo", *sources, "--method", "zoo-lite", "--arch", "small", "--width", "8",
            "--image-size", "8", "--crop-scale", "0.7", "1.0", "--crop-pct", "1.0", "--iters", "8", "--batch-size",
            "16", "--milestones", "3", "6", "--save-every", "4", "--log-every", "10", "--no-progress",
            "--no-tensorboard"]
    assert main(argv + ["--out", str(tmp_path / "a")]) == 0
    calls = {"n": 0}
    real = classification.objective

    def ctrl_c_in_sixth(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 6:
            signal.raise_signal(signal.SIGINT)
        return real(*args, **kwargs)

    capsys.readouterr()
    monkeypatch.setattr(classification, "objective", ctrl_c_in_sixth)
    assert main(argv + ["--out", str(tmp_path / "b")]) == 130
    err = capsys.readouterr().err
    assert "stopped by SIGINT at iteration 6/8; continue with the same command and --resume" in err, err
    assert "Traceback" not in err and not (tmp_path / "b" / "model.pt").exists()
    assert torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=True)["iteration"] == 6   # not the periodic 4
    monkeypatch.setattr(classification, "objective", real)
    assert main(argv + ["--out", str(tmp_path / "b"), "--resume"]) == 0
    a = torch.load(tmp_path / "a" / "model.pt", weights_only=True)
    b = torch.load(tmp_path / "b" / "model.pt", weights_only=True)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert json.loads((tmp_path / "a" / "results.json").read_text())["top1"] == \
        json.loads((tmp_path / "b" / "results.json").read_text())["top1"]


def test_bad_input_is_one_line_and_exit_2(digits, sources, tmp_path, capsys):
    cases = [
        ["--data", str(tmp_path / "missing")],
        ["--data", str(digits), "--method", "fancy"],
        ["--data", str(digits), "--method", "scratch", "--arch", "resnet34"],
        ["--data", str(digits), "--arch", "resnet18", "--method", "single", "--zoo", sources[0]],
        ["--data", str(digits), "--arch", "small", "--method", "single", "--zoo", sources[0]],   # width 16 != 8
        ["--data", str(digits), "--arch", "small", "--width", "8", "--method", "single", "--zoo",
         str(tmp_path / "nope.pt")],
        ["--data", str(digits), "--device", "tpu"],     # was a torch RuntimeError traceback
        ["--data", str(digits), "--threads", "-2"],
        ["--data", str(digits), "--method", "scratch", "--arch", "small", "--batch-size", "0"],   # was a traceback
        ["--data", str(digits), "--method", "scratch", "--arch", "small", "--iters", "0"],       # was a 0-step "run"
        ["--data", str(digits), "--method", "scratch", "--arch", "small", "--width", "0"],
        ["--data", str(digits), "--method", "scratch", "--arch", "small", "--crop-pct", "1.5"],
        ["--data", str(digits), "--method", "scratch", "--arch", "small", "--nesterov", "--momentum", "0"],
        ["--data", str(digits), "--method", "scratch", "--arch", "small", "--ten-crop", "--crop-pct", "1"],
        ["--data", str(digits), "--method", "single", "--arch", "small", "--width", "8", "--zoo", sources[0],
         "--bn-stats", "reset"],                                            # zoo methods only
        ["--data", str(digits), "--method", "hub", "--arch", "small", "--width", "8", "--zoo", *sources,
         "--no-align"],
        ["--data", str(digits), "--method", "zoo", "--arch", "small", "--width", "8", "--zoo", *sources,
         "--no-align", "--align-stages", "official"],                       # contradictory
    ]
    for argv in cases:
        assert main(argv + ["--out", str(tmp_path / "o"), "--no-progress", "--no-tensorboard"]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("error: "), err
    (tmp_path / "o").mkdir(exist_ok=True)                               # bad input wrote nothing
    (tmp_path / "o" / "checkpoint.pt").write_bytes(b"truncated")          # a corrupt checkpoint on --resume
    assert main(["--data", str(digits), "--method", "scratch", "--arch", "small", "--width", "8", "--iters", "2",
                 "--resume", "--out", str(tmp_path / "o"), "--no-progress", "--no-tensorboard"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "checkpoint.pt: not a readable checkpoint" in err, err
    proc = subprocess.run([sys.executable, "-m", "rlzoo_transfer.vision.classify", "--data", str(digits),
                           "--method", "fancy"], capture_output=True, text=True, timeout=60,
                          env={"OMP_NUM_THREADS": "1", "PATH": ""})
    assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0 and "unknown method" in proc.stderr


def _bytes(folder):
    """Every file under ``folder`` (relative path -> bytes)."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_used_out_is_refused_without_resume_and_a_finished_run_is_kept(digits, tmp_path, capsys):
    """Re-running into the --out of a finished run replaced its model.pt, results.json, config.json and checkpoint;
    now it is one line and exit 2 (a finished run or a started one alike), the folder untouched; --resume continues a
    stopped run and leaves a finished one as it is (exit 0, its results printed again)."""
    argv = ["--data", str(digits), "--method", "scratch", "--arch", "small", "--width", "8", "--image-size", "8",
            "--crop-pct", "1", "--iters", "2", "--batch-size", "16", "--no-progress", "--no-tensorboard"]
    done = tmp_path / "done"
    assert main(argv + ["--out", str(done)]) == 0
    line = capsys.readouterr().out
    before = _bytes(done)
    assert {"results.json", "model.pt", "config.json", "checkpoint.pt"} <= set(before)
    assert main(argv + ["--out", str(done), "--seed", "1"]) == 2
    err = capsys.readouterr().err
    assert err == f"error: {done} already holds a finished run (results.json); choose another --out\n", err
    assert _bytes(done) == before
    assert main(argv + ["--out", str(done), "--resume"]) == 0                # finished: nothing trained or written
    captured = capsys.readouterr()
    assert captured.out == line and captured.err == f"done: {done} already holds a finished run (results.json): " \
        "nothing to resume\n", captured
    assert _bytes(done) == before
    lacking = "lacks method, test_nll, iterations, it_per_s"
    for odd, why in (("[1, 2]", "is not a run's results"), ('{"top1": 0.5}', lacking)):   # hand-edited results
        (done / "results.json").write_text(odd)
        assert main(argv + ["--out", str(done), "--resume"]) == 2
        err = capsys.readouterr().err
        assert why in err and err.count("\n") == 1 and "Traceback" not in err, err
    (done / "results.json").write_bytes(before["results.json"])
    stopped = tmp_path / "stopped"                                          # as a Ctrl-C leaves it: no results yet
    stopped.mkdir()
    for name in ("checkpoint.pt", "config.json"):
        (stopped / name).write_bytes(before[name])
    for folder, held in ((stopped, "checkpoint.pt, config.json"), (tmp_path / "started", "config.json")):
        folder.mkdir(exist_ok=True)
        (folder / "config.json").write_bytes(before["config.json"])
        kept = _bytes(folder)
        assert main(argv + ["--out", str(folder)]) == 2
        err = capsys.readouterr().err
        assert err == f"error: {folder} holds an unfinished run ({held}); continue it with --resume, or use another " \
            "--out\n", err
        assert _bytes(folder) == kept
    assert main(argv + ["--out", str(stopped), "--resume"]) == 0             # the stopped run continues
    assert json.loads((stopped / "results.json").read_text())["iterations"] == 2
    (tmp_path / "free").mkdir()                                             # empty, or other files only: free
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "README.txt").write_text("my notes")
    for folder in ("free", "notes"):
        assert main(argv + ["--out", str(tmp_path / folder)]) == 0
        assert (tmp_path / folder / "results.json").exists()
    assert (tmp_path / "notes" / "README.txt").read_text() == "my notes"


def test_resume_of_a_finished_run_with_other_settings_is_refused_and_writes_nothing(digits, tmp_path, capsys):
    """A finished run resumed with another training setting is refused as an unfinished one is, the folder left as
    it is."""
    common = dict(data=str(digits), method="scratch", iters=2, batch_size=16, **SMALL)
    run_classification(ClassifyConfig(out=str(tmp_path / "r"), **common))
    before = _bytes(tmp_path / "r")
    with pytest.raises(classification.UsageError, match="made with lr=0.01, this run has 0.5"):
        run_classification(ClassifyConfig(out=str(tmp_path / "r"), resume=True, **(common | {"lr": 0.5})))
    again = run_classification(ClassifyConfig(out=str(tmp_path / "r"), resume=True, **common))
    assert again["top1"] == json.loads(before["results.json"])["top1"] and _bytes(tmp_path / "r") == before
