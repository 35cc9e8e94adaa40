"""Vision side of rlzoo_transfer (imports layers/, never rl/): torchvision-layout ResNets and their zoo form
(resnet.py), data (data.py), transfer methods (zoo.py), classification (classify.py) and facial-landmark
detection (landmarks.py over faces.py and heatmaps.py), with their run plumbing in runtime.py."""
from rlzoo_transfer.vision.resnet import (ARCHS, CheckpointError, ResNet, build_resnet, check_backbone_keys,
                                          load_backbone, load_state_dict_file, resnet18, resnet50, resnet_small,
                                          zoo_resnet)
from rlzoo_transfer.vision.zoo import METHODS, Ensemble, build_method

__all__ = ["ARCHS", "CheckpointError", "ResNet", "build_resnet", "check_backbone_keys", "load_backbone",
           "load_state_dict_file", "resnet18", "resnet50", "resnet_small", "zoo_resnet", "METHODS", "Ensemble",
           "build_method"]
