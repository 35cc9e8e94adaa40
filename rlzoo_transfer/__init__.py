"""rlzoo_transfer: transfer learning from a zoo of pretrained models, built on Stable-Baselines3."""
__version__ = "0.1.0"
