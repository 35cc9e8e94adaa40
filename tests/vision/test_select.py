"""python -m rlzoo_transfer.select on a tiny generated data set: scores, rankings, judgement, errors."""
import json
import re

import numpy as np
import pytest
import torch

from rlzoo_transfer.select import main
from rlzoo_transfer.selection import spearman, trials_to_best
from rlzoo_transfer.vision.data import (EvalTransform, ImageDataset, Split, digits_images, open_split,
                                        write_image_folder)
from rlzoo_transfer.vision.model_selection import (CountSketch, last_conv_name, lgc_gradients, parse_accuracies,
                                                   parse_named, probe_seed, sample_per_class, sketch_seed)
from rlzoo_transfer.vision.resnet import resnet18, resnet50, resnet_small

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    x, y = digits_images()
    keep = np.flatnonzero(y < 4)[:160]                    # 4 classes, ~40 images each
    write_image_folder(root / "data", "train", x[keep], y[keep])
    write_image_folder(root / "data", "test", x[keep[:20]], y[keep[:20]])
    paths = []
    for i, n_cls in enumerate((3, 12, 5)):
        torch.manual_seed(i)
        p = root / f"src{i}" / "model.pt"                # same file names: told apart by their folders
        p.parent.mkdir()
        torch.save(resnet_small(n_cls, width=8).state_dict(), p)
        paths.append(str(p))
    headless = root / "headless.pt"
    torch.save({k: v for k, v in resnet_small(3, width=8).state_dict().items() if not k.startswith("fc.")}, headless)
    return root, paths, str(headless)


def test_select_cli_ranks_and_judges(tiny, tmp_path, capsys):
    root, paths, headless = tiny
    accs = [f"{p}={a}" for p, a in zip(paths, (70.0, 90.0, 80.0))]
    rc = main(["--data", str(root / "data"), "--zoo", *paths, headless, "--arch", "small", "--width", "8",
               "--image-size", "8", "--crop-pct", "1", "--per-class", "10", "--lgc-probes", "4",
               "--accuracies", *accs, f"{headless}=60", "--out", str(tmp_path / "sel.json")])
    out = capsys.readouterr().out
    assert rc == 0 and "ranking by lfc" in out and "src1/model.pt" in out and "spearman" in out
    res = json.loads((tmp_path / "sel.json").read_text())
    assert res["n_samples"] == 40 and res["last_conv"] == "layer3.0.conv2"
    row = res["scores"][paths[0]]
    assert set(row) == {"lfc", "lgc", "leep", "nce", "logme", "h_score"}
    assert all(np.isfinite(v) for v in row.values())
    assert res["scores"][headless]["leep"] is None and res["scores"][headless]["lfc"] is not None
    assert set(res["rankings"]["lfc"]) == set(paths) | {headless} and len(res["rankings"]["leep"]) == 3
    j = res["judgement"]["lfc"]
    assert -1 <= j["spearman"] <= 1 and 1 <= j["trials_to_best"] <= 4
    assert res["judgement"]["leep"]["spearman"] is None        # one model lacks a head: not comparable
    acc = {**dict(zip(paths, (70.0, 90.0, 80.0))), headless: 60.0}
    for s in ("lfc", "logme", "h_score"):                      # headless too: rankings and judgement of all 4
        by_model = {m: r[s] for m, r in res["scores"].items()}
        assert res["rankings"][s] == sorted(by_model, key=by_model.get, reverse=True)
        assert res["judgement"][s]["spearman"] == pytest.approx(spearman(by_model, acc))
        assert res["judgement"][s]["trials_to_best"] == trials_to_best(by_model, acc)
    assert res["environment"]["commit"] is None or len(res["environment"]["commit"]) == 40


def test_select_rsa_against_a_reference_network(tiny, tmp_path, capsys):
    from scipy import stats

    root, paths, _ = tiny
    rc = main(["--data", str(root / "data"), "--zoo", *paths, "--arch", "small", "--width", "8", "--image-size", "8",
               "--crop-pct", "1", "--per-class", "10", "--scores", "lfc", "rsa", "--rsa-reference", paths[1],
               "--rsa-arch", "small", "--rsa-width", "8", "--out", str(tmp_path / "sel.json")])
    assert rc == 0 and "ranking by rsa" in capsys.readouterr().out
    res = json.loads((tmp_path / "sel.json").read_text())
    assert res["rsa_reference"] == {"path": paths[1], "arch": "small", "feature_dim": 32}
    assert res["scores"][paths[1]]["rsa"] == pytest.approx(1.0)          # the reference itself: the same RDM
    assert res["rankings"]["rsa"][0] == paths[1]
    # independently: the same sample, features by hand, RDMs with numpy, Spearman with scipy
    split = sample_per_class(open_split(root / "data", "train"), 10, seed=0)
    x = torch.stack([ImageDataset(split, EvalTransform(8, 1.0))[i][0] for i in range(len(split))])

    def features(path, n_cls):
        net = resnet_small(n_cls, width=8)
        net.load_state_dict(torch.load(path, weights_only=True))
        with torch.no_grad():
            return net.eval().embed(x).double().numpy()

    iu = np.triu_indices(len(x), k=1)
    ref = (1 - np.corrcoef(features(paths[1], 12)))[iu]
    for path, n_cls in ((paths[0], 3), (paths[2], 5)):
        want = stats.spearmanr((1 - np.corrcoef(features(path, n_cls)))[iu], ref).statistic
        assert res["scores"][path]["rsa"] == pytest.approx(want, abs=1e-9) and want < 0.999
    # given a reference and no --scores, rsa joins the default scores
    assert main(["--data", str(root / "data"), "--zoo", paths[0], "--arch", "small", "--width", "8", "--image-size",
                 "8", "--per-class", "5", "--proj-dim", "64", "--rsa-reference", paths[1], "--rsa-arch", "small",
                 "--rsa-width", "8", "--out", str(tmp_path / "all.json")]) == 0
    assert set(json.loads((tmp_path / "all.json").read_text())["scores"][paths[0]]) == {
        "lfc", "lgc", "leep", "nce", "logme", "h_score", "rsa"}


def test_select_domain_similarity_from_the_sources_own_data(tiny, tmp_path, capsys):
    from scipy import optimize, spatial

    root, paths, _ = tiny
    x, y = digits_images()
    # another "source domain": digits 4-7, 60 / 40 / 20 / 12 images
    other = np.concatenate([np.flatnonzero(y == c)[:n] for c, n in zip(range(4, 8), (60, 40, 20, 12))])
    write_image_folder(tmp_path / "other", "train", x[other], y[other])
    rc = main(["--data", str(root / "data"), "--zoo", *paths, "--arch", "small", "--width", "8", "--image-size", "8",
               "--crop-pct", "1", "--per-class", "10", "--scores", "domain_similarity",
               "--source-data", f"src0/model={root / 'data'}", *(f"src{i}/model={tmp_path / 'other'}" for i in (1, 2)),
               "--out", str(tmp_path / "sel.json")])
    assert rc == 0 and "ranking by domain_similarity" in capsys.readouterr().out
    res = json.loads((tmp_path / "sel.json").read_text())
    assert res["scores"][paths[0]]["domain_similarity"] == pytest.approx(1.0)   # its "source" is the target sample

    def images(data):
        split = sample_per_class(open_split(data, "train"), 10, seed=0)
        return torch.stack([ImageDataset(split, EvalTransform(8, 1.0))[i][0] for i in range(len(split))]), \
            np.asarray(split.labels)

    (xs, ys), (xt, yt) = images(tmp_path / "other"), images(root / "data")
    net = resnet_small(12, width=8)
    net.load_state_dict(torch.load(paths[1], weights_only=True))
    with torch.no_grad():
        fs, ft = net.eval().embed(xs).double().numpy(), net.embed(xt).double().numpy()
    means = lambda f, lab: np.stack([f[lab == c].mean(0) for c in np.unique(lab)])   # noqa: E731
    cost = spatial.distance.cdist(means(fs, ys), means(ft, yt))     # 4 x 4 class means of the 10-image samples
    # each class weighs its share of its whole train split (Cui et al.), not of the sample (10 each)
    ws = np.bincount(y[other] - 4) / len(other)
    wt = np.bincount(y[np.flatnonzero(y < 4)[:160]]) / 160
    assert not np.allclose(ws, 0.25)
    a_eq = np.vstack([np.kron(np.eye(4), np.ones(4)), np.kron(np.ones(4), np.eye(4))])
    lp = optimize.linprog(cost.ravel(), A_eq=a_eq, b_eq=np.concatenate([ws, wt]), bounds=(0, None))
    assert res["scores"][paths[1]]["domain_similarity"] == pytest.approx(np.exp(-0.01 * lp.fun), rel=1e-7)
    assert res["scores"][paths[1]]["domain_similarity"] < 1.0
    # --source-data alone adds domain_similarity to the default scores; with an explicit --scores it says it is unused
    argv = ["--data", str(root / "data"), "--zoo", *paths, "--arch", "small", "--width", "8", "--image-size", "8",
            "--per-class", "5", "--proj-dim", "64",
            "--source-data", *(f"src{i}/model={root / 'data'}" for i in range(3))]
    assert main(argv + ["--out", str(tmp_path / "all.json")]) == 0
    assert "domain_similarity" in json.loads((tmp_path / "all.json").read_text())["scores"][paths[0]]
    assert main(argv + ["--scores", "lfc"]) == 0
    assert "note: --source-data is not used" in capsys.readouterr().err


def test_select_a_collapsed_model_is_left_out_not_fatal(tiny, tmp_path, capsys):
    """A network whose features are zero for every image (all weights zero): the feature and gradient scores are
    undefined for it, so they are null with a note and it is left out of their rankings; the others still rank.
    The same network as rsa's reference would leave rsa undefined for everyone: that is an error."""
    root, paths, _ = tiny
    dead = tmp_path / "dead.pt"
    torch.save({k: torch.ones_like(v) if k.endswith("running_var") else torch.zeros_like(v)
                for k, v in resnet_small(3, width=8).state_dict().items()}, dead)
    base = ["--data", str(root / "data"), "--arch", "small", "--width", "8", "--image-size", "8", "--crop-pct", "1",
            "--per-class", "10", "--lgc-probes", "4", "--rsa-arch", "small", "--rsa-width", "8"]
    rc = main(base + ["--zoo", *paths[:2], str(dead), "--rsa-reference", paths[1], "--out", str(tmp_path / "s.json"),
                      "--accuracies", "src0/model=70", "src1/model=90", "dead=60"])
    out, err = capsys.readouterr()
    lfc_line = next(line for line in out.splitlines() if line.startswith("ranking by lfc: "))
    assert rc == 0 and "dead" not in lfc_line and "src0" in lfc_line and "src1" in lfc_line
    res = json.loads((tmp_path / "s.json").read_text())
    undefined = {"lfc", "lgc", "logme", "h_score", "rsa"}
    assert set(res["undefined"]) == {str(dead)} and set(res["undefined"][str(dead)]) == undefined
    assert all(res["scores"][str(dead)][s] is None for s in undefined)
    assert res["scores"][str(dead)]["leep"] is not None                   # uniform source probabilities: defined
    assert all(res["scores"][p][s] is not None for p in paths[:2] for s in undefined)
    for s in undefined:
        assert sorted(res["rankings"][s]) == sorted(paths[:2]) and res["judgement"][s]["spearman"] is None
        assert re.search(rf"note: {s} is undefined for \S*dead\.pt \(.+\); shown as -", err)
    assert res["judgement"]["leep"]["spearman"] is not None
    # a diverged network (NaN weights): every score null, the others still ranked
    nan = tmp_path / "nan.pt"
    sd = resnet_small(3, width=8).state_dict()
    sd["layer2.0.conv1.weight"][0, 0, 0, 0] = float("nan")
    torch.save(sd, nan)
    assert main(base + ["--zoo", *paths[:2], str(nan), "--scores", "lfc", "leep", "logme", "--out",
                        str(tmp_path / "n.json")]) == 0
    res = json.loads((tmp_path / "n.json").read_text())
    assert res["scores"][str(nan)] == {"lfc": None, "leep": None, "logme": None}
    assert set(res["undefined"][str(nan)]) == {"lfc", "leep", "logme"} and "NaN" in res["undefined"][str(nan)]["lfc"]
    assert sorted(res["rankings"]["leep"]) == sorted(paths[:2])
    assert "note: leep is undefined for" in capsys.readouterr().err
    assert main(base + ["--zoo", *paths, "--scores", "rsa", "--rsa-reference", str(nan)]) == 2   # a diverged one
    err = capsys.readouterr().err
    assert err.startswith(f"error: --rsa-reference {nan} cannot serve") and "NaN" in err and err.count("\n") == 1
    # the collapsed network as the reference: rsa would be undefined for every model
    assert main(base + ["--zoo", *paths, "--scores", "rsa", "--rsa-reference", str(dead)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --rsa-reference") and "constant features" in err and err.count("\n") == 1


def test_select_bad_input(tiny, tmp_path, capsys):
    root, paths, _ = tiny
    base = ["--data", str(root / "data"), "--zoo", *paths, "--image-size", "8"]
    for argv in (base + ["--arch", "resnet18"], base + ["--arch", "small", "--width", "8", "--scores", "magic"],
                 ["--data", str(tmp_path / "none"), "--zoo", *paths, "--arch", "small", "--width", "8"],
                 base + ["--arch", "small", "--width", "8", "--accuracies", "nobody.pt=3"],
                 base + ["--arch", "small", "--width", "8", "--per-class", "0"],
                 base + ["--arch", "small", "--width", "8", "--device", "tpu"],
                 base + ["--arch", "small", "--width", "8", "--scores", "lfc", "rsa"],        # rsa, no reference
                 base + ["--arch", "small", "--width", "8", "--rsa-reference", paths[0]],     # not a resnet18
                 base + ["--arch", "small", "--width", "8", "--rsa-reference", str(tmp_path / "no.pt"),
                         "--rsa-arch", "small", "--rsa-width", "8"],
                 base + ["--arch", "small", "--width", "8", "--rsa-reference", paths[0], "--rsa-arch", "vit"],
                 base + ["--arch", "small", "--width", "8", "--scores", "domain_similarity"],    # no source data
                 base + ["--arch", "small", "--width", "8", "--source-data", f"src0/model={root / 'data'}"],   # 1 of 3
                 base + ["--arch", "small", "--width", "8", "--source-data", f"src0/model={tmp_path / 'none'}",
                         f"src1/model={root / 'data'}", f"src2/model={root / 'data'}"],
                 base + ["--arch", "small", "--width", "8", "--min-class-count", "100", "--source-data",   # no class
                         *(f"src{i}/model={root / 'data'}" for i in range(3))]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and err.count("\n") == 1, err


def test_lgc_gradients_are_per_sample_gradients_of_the_outputs():
    torch.manual_seed(0)
    net = resnet_small(3, width=4).eval()
    x = torch.randn(5, 3, 8, 8)
    g = lgc_gradients(net, x, probes=10, proj_dim=None)              # 3 classes <= 10 probes: exact Jacobian
    w = net.layer3[0].conv2.weight
    assert g.shape == (5, 3 * w.numel())
    for i in (0, 4):
        for c in range(3):
            net.zero_grad()
            net(x[i:i + 1])[0, c].backward()
            assert np.allclose(g[i, c * w.numel():(c + 1) * w.numel()], w.grad.reshape(-1).numpy(), atol=1e-5)
    sk = lgc_gradients(net, x, probes=10, proj_dim=64)               # sketched: the same kernel on average
    assert sk.shape == (5, 64)
    kernels = np.stack([(lambda s: s @ s.T)(lgc_gradients(net, x, probes=10, proj_dim=64, seed=seed))
                        for seed in range(60)])                       # (60, 5, 5), one count sketch per seed
    exact = g @ g.T
    sem = kernels.std(0) / np.sqrt(len(kernels))
    assert np.all(np.abs(kernels.mean(0) - exact) < 4 * sem + 1e-6 * np.abs(exact).max())
    assert np.abs(kernels.mean(0) - exact).max() < 0.2 * np.abs(exact).max()


def test_lgc_probes_estimate_the_kernel_and_draw_apart_from_the_sketch():
    torch.manual_seed(0)
    net = resnet_small(12, width=4).eval()
    x = torch.randn(4, 3, 8, 8)
    exact = (lambda g: g @ g.T)(lgc_gradients(net, x, probes=12, proj_dim=None))   # 12 classes: exact Jacobian
    kernels = np.stack([(lambda g: g @ g.T)(lgc_gradients(net, x, probes=3, proj_dim=None, seed=seed))
                        for seed in range(80)])                     # 3 Gaussian probes per seed: unbiased
    sem = kernels.std(0) / np.sqrt(len(kernels))
    assert np.all(np.abs(kernels.mean(0) - exact) < 4 * sem + 1e-6 * np.abs(exact).max())
    for seed in range(50):   # the probes' stream is none of the sketch blocks' (at seed 0 it was block 0's)
        assert probe_seed(seed) not in {sketch_seed(seed, r) for r in range(1000)}


def test_count_sketch_preserves_inner_products_in_expectation():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(2, 5000, generator=g)
    est = [float(CountSketch(5000, 256, seed=s).block(a, 0).prod(0).sum()) for s in range(200)]
    exact = float((a[0] * a[1]).sum())
    assert abs(np.mean(est) - exact) < 4 * np.std(est) / np.sqrt(len(est))


def test_helpers():
    assert last_conv_name(resnet18()) == "layer4.1.conv2" and last_conv_name(resnet50()) == "layer4.2.conv3"
    split = Split([f"p{i}" for i in range(12)], [0] * 8 + [1] * 4, ["a", "b"])
    s = sample_per_class(split, 5, seed=0)
    assert s.labels == [0] * 5 + [1] * 4
    assert parse_accuracies(["a.pt=1.5", "dir/b=2"], ["x/a.pt", "dir/b.pt"]) == {"x/a.pt": 1.5, "dir/b.pt": 2.0}
    # "=" inside a name or a value (paths such as runs/lr=0.1/...)
    assert parse_named(["a=runs/lr=0.1/data", "lr=2/b.pt=x=y"], ["a.pt", "lr=2/b.pt"], "--source-data", str) == {
        "a.pt": "runs/lr=0.1/data", "lr=2/b.pt": "x=y"}
    with pytest.raises(ValueError, match="no value"):
        parse_accuracies(["a.pt=1"], ["a.pt", "b.pt"])
