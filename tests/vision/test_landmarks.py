"""Landmarks: golden decode / NME values, heatmap round trip, readers, flips, a short training on generated faces."""
import json

import numpy as np
import pytest
import torch

from rlzoo_transfer.vision.data import BatchStream, DataError
from rlzoo_transfer.vision.faces import (EYES_SYNTHETIC, FLIP_PAIRS_300W, FLIP_PAIRS_SYNTHETIC, LandmarkDataset,
                                         apply_transform, attach_boxes, crop_transform, flip_permutation, nme,
                                         open_landmark_split, parse_flip_pairs, read_pts, synthetic_faces,
                                         write_landmark_folder, write_pts)
from rlzoo_transfer.vision.heatmaps import decode_heatmaps, gaussian_heatmaps, heatmap_to_image, image_to_heatmap
from rlzoo_transfer.vision.landmark_detection import build_landmark_net, evaluate_landmarks, heatmap_mse
from rlzoo_transfer.vision.landmarks import main
from rlzoo_transfer.vision.runtime import FitState, fit
from rlzoo_transfer.vision.zoo import objective

torch.set_num_threads(1)
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def faces(tmp_path_factory):
    root = tmp_path_factory.mktemp("faces")
    images, points = synthetic_faces(200, size=32, seed=0)
    write_landmark_folder(root, "train", images[:160], points[:160])
    write_landmark_folder(root, "test", images[160:], points[160:])
    return root


def test_nme_golden():
    target = np.array([[[0.0, 0.0], [10.0, 0.0], [5.0, 5.0]]])          # eyes 0 and 1: distance 10
    pred = target + np.array([[[3.0, 4.0], [0.0, 0.0], [0.0, -2.0]]])    # errors 5, 0, 2
    assert nme(pred, target, eyes=(0, 1)) == pytest.approx([(5 + 0 + 2) / 3 / 10])
    with pytest.raises(ValueError):
        nme(pred[:, :2], target, eyes=(0, 1))


def test_decode_quarter_offset_golden():
    hm = torch.zeros(1, 5, 6)
    hm[0, 2, 3] = 1.0                                  # peak at x=3, y=2
    hm[0, 2, 4], hm[0, 2, 2] = 0.6, 0.2                # right neighbour higher: x + 0.25
    hm[0, 1, 3], hm[0, 3, 3] = 0.5, 0.1                # upper neighbour higher: y - 0.25
    assert decode_heatmaps(hm).tolist() == [[3.25, 1.75]]
    edge = torch.zeros(1, 4, 4)
    edge[0, 0, 0] = 1.0
    edge[0, 0, 1] = 0.9                                # peak on the border: no neighbour pair, no move
    assert decode_heatmaps(edge).tolist() == [[0.0, 0.0]]


def test_heatmap_round_trip_nme_below_one_percent():
    g = torch.Generator().manual_seed(0)
    images = 100
    # 256 x 256 crops with eyes ~100 px apart, heatmaps 64 x 64 (stride 4) as in the protocol
    pts = torch.rand(images, 5, 2, generator=g) * 180 + 38
    pts[:, 0, 0] = pts[:, 0, 0] * 0.5                                  # left eye x in [19, 128)
    pts[:, 1] = pts[:, 0] + torch.tensor([100.0, 0.0])                 # right eye 100 px to its right
    maps = torch.stack([gaussian_heatmaps(image_to_heatmap(p, 4), (64, 64), 1.5) for p in pts])
    assert maps.shape == (images, 5, 64, 64) and float(maps.max()) <= 1.0
    back = heatmap_to_image(decode_heatmaps(maps), 4)
    err = nme(back.numpy(), pts.numpy(), eyes=(0, 1))
    assert err.mean() < 0.01
    assert err.max() <= 0.25 * 2 ** 0.5 * 4 / 100 + 1e-6        # at most a quarter heatmap pixel per axis
    assert float((image_to_heatmap(back, 4) - image_to_heatmap(pts, 4)).abs().max()) <= 0.25 + 1e-5


def test_gaussian_peak_and_out_of_frame():
    m = gaussian_heatmaps(torch.tensor([[2.0, 3.0], [100.0, 100.0]]), (8, 8), sigma=1.0)
    assert m[0, 3, 2] == 1.0 and m[0, 3, 3] == pytest.approx(np.exp(-0.5))
    assert float(m[1].abs().sum()) == 0.0


def test_pts_and_csv_readers(tmp_path, faces):
    pts = np.array([[1.5, 2.0], [3.25, 4.0]])
    write_pts(tmp_path / "a.pts", pts)
    assert "n_points: 2" in (tmp_path / "a.pts").read_text()
    assert np.allclose(read_pts(tmp_path / "a.pts"), pts)
    split = open_landmark_split(faces, "train")
    assert len(split) == 160 and split.points.shape == (160, 5, 2)
    rows = ["path,split," + ",".join(f"x{i},y{i}" for i in range(5))]
    for p, q in zip(split.paths[:10], split.points[:10]):
        rows.append(f"{p.relative_to(faces)},train," + ",".join(f"{v:.3f}" for v in q.reshape(-1)))
    (faces / "lm.csv").write_text("\n".join(rows) + "\n")
    csv_split = open_landmark_split(faces / "lm.csv", "train")
    assert len(csv_split) == 10 and np.allclose(csv_split.points, split.points[:10], atol=1e-3)


def test_test_crops_from_face_boxes(faces, tmp_path):
    """--test-boxes: each test crop is placed around its own face box (x box_scale on the longer side) instead of
    its landmarks' bounding box; rows are matched by path or by a unique file name; gaps are clear errors."""
    split = open_landmark_split(faces, "test")
    lo, hi = split.points.min(1), split.points.max(1)
    rows = ["image,x0,y0,x1,y1"] + [f"../{faces.name}/test/{p.name},{a[0]},{a[1]},{b[0]},{b[1]}"
                                    for p, a, b in zip(split.paths, lo, hi)]
    (tmp_path / "same.csv").write_text("\n".join(rows) + "\n")         # the landmarks' boxes: the same crops
    plain = LandmarkDataset(split, 32, 2, box_scale=2.0)
    same = LandmarkDataset(attach_boxes(split, tmp_path / "same.csv"), 32, 2, box_scale=2.0)
    assert same.split.boxes.shape == (40, 4)
    for i in (0, 7):
        assert np.allclose(same.points(i), plain.points(i)) and torch.allclose(same[i][0], plain[i][0])
    # a detector-like box: shifted right by 3 px and 1.5x as large -> the points move left and shrink in the crop
    centre, side = (lo + hi) / 2 + [3.0, 0.0], (hi - lo).max(1, keepdims=True) * 1.5
    shifted = [f"{p.name},{c[0] - s[0] / 2},{c[1] - s[0] / 2},{c[0] + s[0] / 2},{c[1] + s[0] / 2}"
               for p, c, s in zip(split.paths, centre, side)]
    (faces / "test" / "det.csv").write_text("\n".join(shifted) + "\n")   # by file name, beside the images
    det = LandmarkDataset(attach_boxes(split, faces / "test" / "det.csv"), 32, 2, box_scale=2.0)
    for i in (0, 7):
        q, r = det.points(i), plain.points(i)
        assert np.allclose(q - q.mean(0), (r - r.mean(0)) / 1.5, atol=1e-9)       # 1.5x the box: 1/1.5 the size
        k = 32 / (side[i, 0] * 2.0)                                                 # crop pixels per image pixel
        assert np.allclose(q.mean(0) - 15.5, (split.points[i].mean(0) - centre[i]) * k)
    # errors: an image without a box, a malformed row, an empty box
    (tmp_path / "part.csv").write_text("\n".join(rows[:5]) + "\n")
    with pytest.raises(DataError, match="no row names the image"):
        attach_boxes(split, tmp_path / "part.csv")
    # a train image of the same file name is not a test image's box (train and test both have 0000.png)
    train0 = open_landmark_split(faces, "train").paths[0]
    assert train0.name == split.paths[0].name
    (faces / "train_only.csv").write_text(f"train/{train0.name},1,2,3,4\n" + "\n".join(rows[2:]) + "\n")
    with pytest.raises(DataError, match=f"no row names the image {split.paths[0]}"):
        attach_boxes(split, faces / "train_only.csv")
    (tmp_path / "bare.csv").write_text("\n".join(shifted) + "\n")     # bare names, kept elsewhere: by name
    assert np.array_equal(attach_boxes(split, tmp_path / "bare.csv").boxes, det.split.boxes)
    for bad, message in (("a.png,1,2,3\n", "expected image,x0,y0,x1,y1"), ("a.png,1,2,x,4\n", "non-numeric"),
                         ("a.png,5,2,3,4\n", "x1 > x0"), ("a.png,1,2,3,4\na.png,1,2,3,4\n", "a second box")):
        (tmp_path / "bad.csv").write_text(bad)
        with pytest.raises(DataError, match=message):
            attach_boxes(split, tmp_path / "bad.csv")
    with pytest.raises(DataError, match="no such face-box file"):
        attach_boxes(split, tmp_path / "none.csv")
    binary = tmp_path / "binary.csv"                                   # not text: the file named
    binary.write_bytes(bytes(range(128, 256)))
    for read in (lambda: attach_boxes(split, binary), lambda: open_landmark_split(binary, "test"),
                 lambda: read_pts(binary), lambda: parse_flip_pairs(str(binary), 5)):
        with pytest.raises(DataError, match="binary.csv: not a UTF-8 text file"):
            read()


def test_flips_swap_left_and_right():
    assert parse_flip_pairs("300w", 68) == FLIP_PAIRS_300W and len(FLIP_PAIRS_300W) == 29
    assert parse_flip_pairs("0-1,3-4", 5) == FLIP_PAIRS_SYNTHETIC
    # 300W's pairs are valid indices of WFLW's 98 points but mirror other points there: a named map fits its K only
    with pytest.raises(ValueError, match="mirror map of 68 landmarks, the data have 98"):
        parse_flip_pairs("300w", 98)
    with pytest.raises(ValueError, match="mirror map of 5 landmarks, the data have 68"):
        parse_flip_pairs("synthetic", 68)
    assert flip_permutation(5, FLIP_PAIRS_SYNTHETIC) == [1, 0, 2, 4, 3]
    perm68 = flip_permutation(68, FLIP_PAIRS_300W)
    assert sorted(perm68) == list(range(68)) and perm68[36] == 45 and perm68[30] == 30   # nose tip stays
    _, points = synthetic_faces(1, 32, seed=1)
    p = points[0]
    m = crop_transform(p, 32, 2.0, flip=True)
    q = apply_transform(m, p)[flip_permutation(5, FLIP_PAIRS_SYNTHETIC)]
    plain = apply_transform(crop_transform(p, 32, 2.0), p)
    assert q[0, 0] < q[1, 0] and q[3, 0] < q[4, 0]           # "left" eye / mouth corner still on the left
    assert np.allclose(q[:, 0], 31 - plain[[1, 0, 2, 4, 3], 0]) and np.allclose(q[:, 1], plain[[1, 0, 2, 4, 3], 1])


def test_augmented_targets_follow_the_image(faces):
    torch.manual_seed(0)
    ds = LandmarkDataset(open_landmark_split(faces, "train"), 32, 2, 1.0, True, FLIP_PAIRS_SYNTHETIC,
                         box_scale=2.0)
    for i in range(10):
        x, target = ds[i]
        assert x.shape == (3, 32, 32) and target.shape == (5, 16, 16)
        eyes = heatmap_to_image(decode_heatmaps(target), 2)[:2]
        for ex, ey in eyes.round().long().clamp(0, 31).tolist():   # the eyes are dark discs on a light face
            assert float(x[:, ey, ex].mean()) < -0.5


def test_short_training_lowers_nme(faces):
    torch.manual_seed(0)
    common = dict(image_size=32, stride=2, sigma=1.5, flip_pairs=FLIP_PAIRS_SYNTHETIC, box_scale=2.0)
    train = LandmarkDataset(open_landmark_split(faces, "train"), train=True, **common)
    test = LandmarkDataset(open_landmark_split(faces, "test"), **common)
    net = build_landmark_net("small", 5, width=8, heatmap_stride=2)
    before = evaluate_landmarks(net, test, EYES_SYNTHETIC, CPU)["nme"]
    opt = torch.optim.Adam(net.parameters(), 1e-3)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, [1000])
    fit(net, BatchStream(train, 8), opt, sched, 120, lambda n, x, y: objective(n, n(x), y, heatmap_mse), CPU,
        FitState(), progress=False)
    after = evaluate_landmarks(net, test, EYES_SYNTHETIC, CPU)["nme"]
    assert after < 0.25 * before and after < 0.15, (before, after)


def test_landmark_cli_with_a_zoo(faces, tmp_path, capsys):
    paths = []
    for i in range(2):
        torch.manual_seed(i)
        net = build_landmark_net("small", 5, width=8, heatmap_stride=2)
        sd = {k: v for k, v in net.state_dict().items() if not k.startswith("head.")}
        paths.append(str(tmp_path / f"s{i}.pt"))
        torch.save(sd, paths[-1])
    argv = ["--data", str(faces), "--arch", "small", "--width", "8", "--image-size", "32", "--heatmap-stride", "2",
            "--flip-pairs", "synthetic", "--box-scale", "2", "--iters", "4", "--batch-size", "8", "--no-progress",
            "--no-tensorboard"]
    assert main(argv + ["--method", "zoo", "--zoo", *paths, "--out", str(tmp_path / "zoo")]) == 0
    res = json.loads((tmp_path / "zoo" / "results.json").read_text())
    assert res["iterations"] == 4 and np.isfinite(res["nme"])
    assert main(argv + ["--method", "hub", "--zoo", *paths, "--out", str(tmp_path / "hub")]) == 0
    assert main(argv + ["--method", "zoo-lite", "--zoo", *paths, "--out", str(tmp_path / "official"),
                        "--align-stages", "official", "--bn-stats", "reset"]) == 0     # the official zoo recipe
    cfg = json.loads((tmp_path / "official" / "config.json").read_text())["config"]
    assert (cfg["align_stages"], cfg["bn_stats"]) == ("official", "reset")
    test = open_landmark_split(faces, "test")                              # face boxes for the test crops
    lo, hi = test.points.min(1), test.points.max(1)
    (tmp_path / "boxes.csv").write_text("".join(f"{p},{a[0] - 2},{a[1]},{b[0] + 2},{b[1] + 1}\n"
                                                for p, a, b in zip(test.paths, lo, hi)))
    assert main(argv + ["--method", "scratch", "--out", str(tmp_path / "boxed"), "--test-boxes",
                        str(tmp_path / "boxes.csv")]) == 0
    boxed = json.loads((tmp_path / "boxed" / "config.json").read_text())["config"]
    assert boxed["test_boxes"] == str(tmp_path / "boxes.csv") and len(boxed["test_boxes_sha256"]) == 64
    with open(tmp_path / "boxes.csv", "a") as f:                             # other boxes, same path: no resume
        f.write("extra.png,1,2,3,4\n")
    capsys.readouterr()
    assert main(argv + ["--method", "scratch", "--out", str(tmp_path / "boxed"), "--test-boxes",
                        str(tmp_path / "boxes.csv"), "--resume"]) == 2
    assert "test_boxes_sha256" in capsys.readouterr().err
    capsys.readouterr()
    assert main(argv + ["--method", "single", "--zoo", paths[0], "--arch", "resnet18",
                        "--out", str(tmp_path / "bad")]) == 2
    assert capsys.readouterr().err.startswith("error: ")
    assert main(["--data", str(faces), "--eyes", "0", "9", "--no-progress", "--method", "scratch",
                 "--out", str(tmp_path / "bad2")]) == 2
    for extra, message in ((["--batch-size", "0"], "--batch-size 0 (must be > 0)"),
                           (["--sigma", "0"], "--sigma 0.0 (must be > 0)"),
                           (["--heatmap-stride", "-1"], "--heatmap-stride -1 (must be > 0)"),
                           (["--device", "tpu"], "unknown device 'tpu'"),
                           (["--flip-pairs", "300w"], "--flip-pairs 300w is the mirror map of 68 landmarks, the data "
                                                      "have 5"),
                           (["--arch", "resnet34"], "unknown --arch 'resnet34'; choose from resnet18, resnet50, "
                                                    "small"),
                           (["--bn-stats", "reset"], "--bn-stats applies to the zoo methods"),
                           (["--test-boxes", str(tmp_path / "none.csv")], "no such face-box file")):
        assert main(argv + ["--method", "scratch", "--out", str(tmp_path / "bad3"), *extra]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and message in err, err
    assert not (tmp_path / "bad3").exists()


def _bytes(folder):
    """Every file under ``folder`` (relative path -> bytes)."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_used_out_is_refused_without_resume_and_a_finished_run_is_kept(faces, tmp_path, capsys):
    """Re-running into a finished run's --out replaced its files; now it is one line and exit 2, as for a stopped
    run, the folder untouched; --resume of the finished run exits 0 and writes nothing."""
    argv = ["--data", str(faces), "--method", "scratch", "--arch", "small", "--width", "8", "--image-size", "32",
            "--heatmap-stride", "2", "--flip-pairs", "synthetic", "--box-scale", "2", "--iters", "2",
            "--batch-size", "8", "--no-progress", "--no-tensorboard"]
    done = tmp_path / "done"
    assert main(argv + ["--out", str(done)]) == 0
    line = capsys.readouterr().out
    before = _bytes(done)
    assert main(argv + ["--out", str(done)]) == 2
    err = capsys.readouterr().err
    assert err == f"error: {done} already holds a finished run (results.json); choose another --out\n", err
    assert _bytes(done) == before
    assert main(argv + ["--out", str(done), "--resume"]) == 0
    captured = capsys.readouterr()
    assert captured.out == line and captured.err.startswith(f"done: {done} already holds a finished run"), captured
    assert _bytes(done) == before
    stopped = tmp_path / "stopped"                                          # checkpoint and config, no results yet
    stopped.mkdir()
    for name in ("checkpoint.pt", "config.json"):
        (stopped / name).write_bytes(before[name])
    assert main(argv + ["--out", str(stopped)]) == 2
    assert capsys.readouterr().err == f"error: {stopped} holds an unfinished run (checkpoint.pt, config.json); " \
        "continue it with --resume, or use another --out\n"
    assert sorted(_bytes(stopped)) == ["checkpoint.pt", "config.json"]
    assert main(argv + ["--out", str(stopped), "--resume"]) == 0
    assert json.loads((stopped / "results.json").read_text())["iterations"] == 2
