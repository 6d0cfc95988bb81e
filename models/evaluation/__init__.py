"""Re-id evaluation: CMC/mAP/mINP at any scale, k-reciprocal re-ranking, ranked-list pictures."""

from .distance import pairwise_distance
from .evaluate import RankResult, evaluate_features, evaluate_rank
from .rerank import evaluate_re_ranked, re_ranking, re_ranking_features, re_ranking_rows
from .visualize import ranked_gallery, save_ranked_list

__all__ = [
    "RankResult",
    "evaluate_features",
    "evaluate_rank",
    "evaluate_re_ranked",
    "pairwise_distance",
    "ranked_gallery",
    "re_ranking",
    "re_ranking_features",
    "re_ranking_rows",
    "save_ranked_list",
]
