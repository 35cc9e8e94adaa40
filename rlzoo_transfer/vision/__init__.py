"""Vision side of rlzoo_transfer (imports layers/, never rl/): torchvision-layout ResNets and their zoo form
(resnet.py), data (data.py), transfer methods (zoo.py), classification (classify.py, the CLI, over
classification.py) and facial-landmark detection (landmarks.py, the CLI, over landmark_detection.py, faces.py and
heatmaps.py), with their run plumbing in runtime.py and their torch-free options in options.py.

The names below load their module (and torch) on first use, so that the CLIs can parse their arguments first."""
from __future__ import annotations

import importlib

_EXPORTS = {"ARCHS": "options", "METHODS": "options", "CheckpointError": "resnet", "ResNet": "resnet",
            "build_resnet": "resnet", "check_backbone_keys": "resnet", "load_backbone": "resnet",
            "load_state_dict_file": "resnet", "resnet18": "resnet", "resnet50": "resnet", "resnet_small": "resnet",
            "zoo_resnet": "resnet", "Ensemble": "zoo", "build_method": "zoo"}
__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
