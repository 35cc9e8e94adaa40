"""ResNets with torchvision's layout: parameter counts, hand-written torchvision keys, the weight-file loader and the
zoo form."""
import hashlib

import pytest
import torch
from torch import nn

from rlzoo_transfer.layers import AdaAggConv2d
from rlzoo_transfer.vision.resnet import (CheckpointError, build_resnet, check_backbone_keys, load_backbone,
                                          load_state_dict_file, resnet18, resnet50, resnet_small, zoo_resnet)

torch.set_num_threads(1)


def bn(prefix, c):
    return {f"{prefix}.weight": (c,), f"{prefix}.bias": (c,), f"{prefix}.running_mean": (c,),
            f"{prefix}.running_var": (c,), f"{prefix}.num_batches_tracked": ()}


def torchvision_resnet18_keys(num_classes=1000):
    """torchvision.models.resnet18().state_dict() keys and shapes, written out by hand (no torchvision here)."""
    keys = {"conv1.weight": (64, 3, 7, 7), **bn("bn1", 64)}
    cin = 64
    for i, w in enumerate((64, 128, 256, 512), start=1):
        for j in range(2):
            p = f"layer{i}.{j}"
            keys[f"{p}.conv1.weight"] = (w, cin if j == 0 else w, 3, 3)
            keys.update(bn(f"{p}.bn1", w))
            keys[f"{p}.conv2.weight"] = (w, w, 3, 3)
            keys.update(bn(f"{p}.bn2", w))
            if i > 1 and j == 0:
                keys[f"{p}.downsample.0.weight"] = (w, cin, 1, 1)
                keys.update(bn(f"{p}.downsample.1", w))
        cin = w
    keys["fc.weight"], keys["fc.bias"] = (num_classes, 512), (num_classes,)
    return keys


def fake_checkpoint(keys, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {k: (torch.tensor(7) if k.endswith("num_batches_tracked") else torch.randn(s, generator=g))
            for k, s in keys.items()}


def test_parameter_counts_match_torchvision():
    assert sum(p.numel() for p in resnet18().parameters()) == 11_689_512
    assert sum(p.numel() for p in resnet50().parameters()) == 25_557_032


def test_resnet18_keys_are_torchvisions():
    ref = torchvision_resnet18_keys()
    sd = resnet18().state_dict()
    assert list(sd) == list(ref)                      # same names, same order
    assert {k: tuple(v.shape) for k, v in sd.items()} == ref
    assert "layer2.0.downsample.0.weight" in sd and "bn1.running_mean" in sd


def test_torchvision_format_file_loads(tmp_path):
    ckpt = fake_checkpoint(torchvision_resnet18_keys())
    path = tmp_path / "resnet18-fake.pth"
    torch.save(ckpt, path)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    sd = load_state_dict_file(path, sha256=digest)
    net = load_backbone(resnet18(num_classes=5), sd)
    got = net.state_dict()
    for k, v in ckpt.items():
        if not k.startswith("fc."):
            assert torch.equal(got[k], v), k
    assert got["fc.weight"].shape == (5, 512)            # the head is the new task's
    assert load_state_dict_file(path, sha256=digest[:8]) is not None       # torchvision-style short prefix
    with pytest.raises(CheckpointError, match="sha256"):
        load_state_dict_file(path, sha256="0" * 64)


def test_wrapped_prefixed_and_headless_files_load(tmp_path):
    ckpt = fake_checkpoint(torchvision_resnet18_keys())
    wrapped = {"state_dict": {"module.encoder_q." + k: v for k, v in ckpt.items()}, "epoch": 3}   # MoCo-style
    torch.save(wrapped, tmp_path / "moco.pth")
    sd = load_state_dict_file(tmp_path / "moco.pth")
    assert "conv1.weight" in sd
    # a detection backbone: no fc, FrozenBatchNorm without num_batches_tracked, other modules beside it
    det = {"backbone.body." + k: v for k, v in ckpt.items() if not k.startswith("fc.")
           and not k.endswith("num_batches_tracked")}
    det["rpn.head.conv.weight"] = torch.zeros(3)
    torch.save(det, tmp_path / "maskrcnn.pth")
    net = load_backbone(resnet18(10), load_state_dict_file(tmp_path / "maskrcnn.pth"))
    assert torch.equal(net.layer4[1].conv2.weight, ckpt["layer4.1.conv2.weight"])


def test_wrong_key_and_wrong_shape_give_clear_errors(tmp_path):
    ckpt = fake_checkpoint(torchvision_resnet18_keys())
    bad = dict(ckpt)
    bad["layer1.0.conv_1.weight"] = bad.pop("layer1.0.conv1.weight")
    with pytest.raises(CheckpointError, match=r"1 missing \(first 'layer1.0.conv1.weight'\).*1 unexpected "
                                              r"\(first 'layer1.0.conv_1.weight'\)"):
        check_backbone_keys(resnet18(), bad, name="bad.pth")
    with pytest.raises(CheckpointError, match="keys do not match resnet50"):
        check_backbone_keys(resnet50(), ckpt, name="r18.pth")
    shaped = dict(ckpt)
    shaped["layer3.0.conv2.weight"] = torch.zeros(256, 256, 1, 1)
    with pytest.raises(CheckpointError, match=r"'layer3.0.conv2.weight' has shape \(256, 256, 1, 1\)"):
        check_backbone_keys(resnet18(), shaped)
    (tmp_path / "junk.pt").write_bytes(b"not a torch file")
    with pytest.raises(CheckpointError, match="cannot be read"):
        load_state_dict_file(tmp_path / "junk.pt")
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        load_state_dict_file(tmp_path / "missing.pt")


def test_small_resnet_shapes():
    net = resnet_small(10, width=8)
    assert net(torch.randn(2, 3, 8, 8)).shape == (2, 10)
    assert net.features(torch.randn(2, 3, 32, 32)).shape == (2, 32, 8, 8) and net.stride == 4
    assert isinstance(net.maxpool, nn.Identity) and "layer3.0.downsample.0.weight" in net.state_dict()
    with pytest.raises(ValueError, match="unknown architecture"):
        build_resnet("vgg", 10)


def test_zoo_form_of_resnet50_follows_the_official_code():
    torch.manual_seed(0)
    sources = [resnet50().state_dict() for _ in range(2)]
    net = zoo_resnet(resnet50(num_classes=7), sources, mode="adaptive")
    block = net.layer1[0]
    assert all(isinstance(c, AdaAggConv2d) for c in (block.conv1, block.conv2, block.conv3, block.downsample[0]))
    assert block.conv2.align is not None                                    # 3x3: alignment
    assert block.conv1.align is None and block.conv3.align is None and block.downsample[0].align is None
    assert net.conv1.align is not None and net.conv1.gate_norm == "none"
    assert type(net.fc) is nn.Linear and net.fc.out_features == 7            # head plain, new
    assert isinstance(block.bn1, nn.BatchNorm2d)
    mean = (sources[0]["layer1.0.bn1.running_mean"] + sources[1]["layer1.0.bn1.running_mean"]) / 2
    assert torch.allclose(block.bn1.running_mean, mean)                      # BN averaged
    assert torch.equal(net.layer4[2].conv3.weight[1], sources[1]["layer4.2.conv3.weight"])


def test_official_alignment_stages_and_reset_batchnorm_statistics():
    """--align-stages official: T only in the stem and the last two stages (thuml/Zoo-Tuning's ResNet-50 rule);
    --bn-stats reset: running statistics 0 / 1 with no batch counted, affine parameters still averaged."""
    torch.manual_seed(0)
    sources = [fake_checkpoint(torchvision_resnet18_keys(), seed=i) for i in range(2)]
    net = zoo_resnet(resnet18(7), sources, align_stages="official", bn_stats="reset")
    spatial = {n for n, m in resnet18().named_modules() if type(m) is nn.Conv2d and m.kernel_size != (1, 1)}
    aligned = {n for n, m in net.named_modules() if isinstance(m, AdaAggConv2d) and m.align is not None}
    assert aligned == {n for n in spatial if n == "conv1" or n.startswith(("layer3.", "layer4."))}
    assert "layer2.1.conv2" in spatial - aligned and "layer3.0.conv1" in aligned
    default = zoo_resnet(resnet18(7), sources)
    assert {n for n, m in default.named_modules() if isinstance(m, AdaAggConv2d) and m.align is not None} == spatial
    bns = [(n, m) for n, m in net.named_modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(bns) == 20
    for n, m in bns:
        assert torch.equal(m.running_mean, torch.zeros_like(m.running_mean)), n
        assert torch.equal(m.running_var, torch.ones_like(m.running_var)) and int(m.num_batches_tracked) == 0, n
        assert torch.allclose(m.weight, (sources[0][f"{n}.weight"] + sources[1][f"{n}.weight"]) / 2), n
    mean = (sources[0]["layer2.0.bn1.running_mean"] + sources[1]["layer2.0.bn1.running_mean"]) / 2
    assert torch.allclose(default.layer2[0].bn1.running_mean, mean)          # the default still averages
    small = zoo_resnet(resnet_small(4, width=8), [resnet_small(4, width=8).state_dict()] * 2, align_stages="official")
    assert small.layer1[0].conv1.align is None and small.conv1.align is not None
    assert small.layer2[0].conv1.align is not None and small.layer3[0].conv2.align is not None
    noalign = zoo_resnet(resnet18(7), sources, align=False, align_stages="official")
    assert not any(isinstance(m, AdaAggConv2d) and m.align is not None for m in noalign.modules())
    with pytest.raises(ValueError, match="align_stages"):
        zoo_resnet(resnet18(7), sources, align_stages="late")
    with pytest.raises(ValueError, match="bn_stats"):
        zoo_resnet(resnet18(7), sources, bn_stats="zero")


def test_zoo_of_identical_sources_reproduces_the_source():
    """average aggregation of m copies is the source itself; lite (shared gate) equals it up to BN's eps in
    training mode, where BatchNorm absorbs the gates' scale (the reason for gate_norm='none')."""
    torch.manual_seed(0)
    src = resnet_small(4, width=8)
    src.train()(torch.randn(32, 3, 8, 8))                                    # non-trivial running stats
    x = torch.randn(6, 3, 8, 8)
    for mode in ("average", "lite"):
        net = zoo_resnet(resnet_small(4, width=8), [src.state_dict()] * 3, mode=mode)
        net.fc.load_state_dict(src.fc.state_dict())
        if mode == "average":
            assert torch.allclose(net.eval()(x), src.eval()(x), atol=1e-5)
        else:
            ref = resnet_small(4, width=8)
            ref.load_state_dict(src.state_dict())
            assert torch.allclose(net.train()(x), ref.train()(x), atol=1e-3)


def test_zoo_resnet18_forward_backward():
    torch.manual_seed(0)
    net = zoo_resnet(resnet18(3), [resnet18().state_dict() for _ in range(2)], mode="adaptive")
    out = net(torch.randn(2, 3, 32, 32))
    out.sum().backward()
    assert out.shape == (2, 3) and net.layer2[0].conv1.gate[0].weight.grad is not None
