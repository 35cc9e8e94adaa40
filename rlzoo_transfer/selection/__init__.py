"""Model selection before fine-tuning: transferability scores (pure numpy) and how to judge them.

Scores (higher = better model to fine-tune): ``lfc``, ``lgc`` (Deshpande et al. 2021), ``leep``, ``nce``,
``logme``, ``h_score``, ``rsa``, ``domain_similarity``; helpers ``label_similarity``, ``linear_kernel``,
``kernel_label_correlation``, ``random_projection``, ``rdm``, ``rdm_entries``, ``earth_movers_distance``;
``UndefinedScoreError`` when a score is undefined for a degenerate model (constant features).
Evaluation against measured accuracies: ``rank_models``, ``spearman``, ``trials_to_best``, ``best_of_top_k``.
"""
from rlzoo_transfer.selection.ranking import best_of_top_k, rank_models, spearman, trials_to_best
from rlzoo_transfer.selection.scores import (UndefinedScoreError, correlate_rdms, domain_similarity,
                                             earth_movers_distance, h_score, kernel_label_correlation,
                                             label_similarity, leep, lfc, lgc, linear_kernel, logme, nce,
                                             random_projection, rdm, rdm_entries, rsa)

__all__ = [
    "UndefinedScoreError",
    "best_of_top_k",
    "correlate_rdms",
    "domain_similarity",
    "earth_movers_distance",
    "h_score",
    "kernel_label_correlation",
    "label_similarity",
    "leep",
    "lfc",
    "lgc",
    "linear_kernel",
    "logme",
    "nce",
    "random_projection",
    "rank_models",
    "rdm",
    "rdm_entries",
    "rsa",
    "spearman",
    "trials_to_best",
]
