"""The shared layer library (imports torch only): NoisyLinear, AdaAgg layers, Hub-Pathway, Zoo-Tuning conversion."""
from rlzoo_transfer.layers.adaagg import AdaAggBase, AdaAggConv2d, AdaAggLinear, AdaAggNoisyLinear, export_module
from rlzoo_transfer.layers.convert import adaagg_layers, average_state_dict, check_state_dicts, zoo_convert
from rlzoo_transfer.layers.noisy import NoisyLinear, reset_noise, set_noise
from rlzoo_transfer.layers.pathway import HubPathway, PathwayState
from rlzoo_transfer.layers.stats import flat_stats, gate_means, pathway_means

__all__ = [
    "NoisyLinear", "reset_noise", "set_noise",
    "AdaAggBase", "AdaAggConv2d", "AdaAggLinear", "AdaAggNoisyLinear", "export_module",
    "zoo_convert", "adaagg_layers", "check_state_dicts", "average_state_dict",
    "HubPathway", "PathwayState",
    "gate_means", "pathway_means", "flat_stats",
]
