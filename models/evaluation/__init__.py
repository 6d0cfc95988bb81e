"""Re-id evaluation: CMC/mAP/mINP at any scale, k-reciprocal re-ranking, ranked-list pictures."""

from .distance import pairwise_distance
from .evaluate import RankResult, evaluate_features, evaluate_rank
from .rerank import re_ranking, re_ranking_features
from .visualize import ranked_gallery, save_ranked_list

__all__ = [
    "RankResult",
    "evaluate_features",
    "evaluate_rank",
    "pairwise_distance",
    "ranked_gallery",
    "re_ranking",
    "re_ranking_features",
    "save_ranked_list",
]
