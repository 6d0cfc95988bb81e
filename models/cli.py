"""Command line: `python -m models {train,eval,synthetic} --help`.

`python -m models train` with no options draws the built-in synthetic set,
scores the untrained RGA-Net, trains it for a few minutes on the CPU and
scores it again.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Sequence

from .data.datasets import DATASETS
from .data.synthetic import SyntheticConfig, make_synthetic_market
from .engine.config import RECIPES, TrainConfig
from .engine.trainer import AMP_MODES
from .engine.zoo import MODEL_NAMES

DATASET_NAMES = ("synthetic", *DATASETS)


def _int_list(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def _add_train_options(parser: argparse.ArgumentParser) -> None:
    d = TrainConfig()
    data = parser.add_argument_group("data")
    data.add_argument("--dataset", choices=DATASET_NAMES, default=d.dataset,
                      help="data set (default: %(default)s, drawn under --data-root on first use)")
    data.add_argument("--data-root", default=d.data_root, help="folder holding the data sets (default: %(default)s)")
    data.add_argument("--synthetic-seed", type=int, default=d.synthetic_seed, help="seed of the synthetic set")
    data.add_argument("--workers", type=int, default=d.workers, help="data-loading processes (default: %(default)s)")
    model = parser.add_argument_group("model")
    model.add_argument("--model", choices=MODEL_NAMES, help="network (default: the recipe's: rganet-s for "
                       "synthetic, rganet for rga, hacnn for hacnn)")
    model.add_argument("--height", type=int, help="input height (default: the recipe's)")
    model.add_argument("--width", type=int, help="input width (default: the recipe's)")
    model.add_argument("--scale", type=int, help="RGA cha_ratio and spa_ratio (default: the recipe's)")
    model.add_argument("--d-scale", type=int, help="RGA down_ratio (default: the recipe's)")
    model.add_argument("--dropout", type=float, default=d.dropout)
    model.add_argument("--backend", default=d.backend,
                       help="rga_ops backend: auto, cpp, torch, reference, cuda, triton (default: %(default)s)")
    recipe = parser.add_argument_group("recipe (defaults come from --recipe)")
    recipe.add_argument("--recipe", choices=sorted(RECIPES), default=d.recipe,
                        help="rga: the paper's (Adam 8e-4, 20-epoch warm-up, halving steps, 600 epochs); hacnn: SGD "
                             "0.03, steps at 50%% and 75%% of 300 epochs; synthetic: the rga recipe in minutes "
                             "(default: %(default)s)")
    recipe.add_argument("--optimizer", choices=("adam", "sgd"))
    recipe.add_argument("--lr", type=float)
    recipe.add_argument("--weight-decay", type=float)
    recipe.add_argument("--warmup-epochs", type=int)
    recipe.add_argument("--warmup-factor", type=float, help="lr factor of the first warm-up epoch")
    recipe.add_argument("--milestones", type=_int_list, help="epochs where the lr is multiplied by --gamma, e.g. 40,70")
    recipe.add_argument("--gamma", type=float)
    recipe.add_argument("--epochs", type=int)
    recipe.add_argument("--num-identities", "-P", type=int, help="identities per batch and process")
    recipe.add_argument("--num-instances", "-K", type=int, help="pictures per identity in a batch")
    recipe.add_argument("--crop", choices=("enlarge", "pad", "none"))
    recipe.add_argument("--erase-p", type=float, help="random erasing probability")
    recipe.add_argument("--identity-start", action=argparse.BooleanOptionalAction, default=None,
                        help="start RGA-Net near the identity: zero-initialised residual branches, attention gates "
                             "almost open (for training from scratch)")
    recipe.add_argument("--label-smoothing", type=float, default=d.label_smoothing)
    recipe.add_argument("--margin", type=float, default=d.margin, help="triplet margin")
    recipe.add_argument("--triplet-weight", type=float, default=d.triplet_weight)
    evaluation = parser.add_argument_group("evaluation")
    evaluation.add_argument("--eval-every", type=int, default=d.eval_every,
                            help="evaluate every N epochs (0: at the end only)")
    evaluation.add_argument("--eval-before", action=argparse.BooleanOptionalAction, default=None,
                            help="score the untrained model first (default: on for the synthetic set)")
    evaluation.add_argument("--flip-eval", action=argparse.BooleanOptionalAction, default=None,
                            help="average features with the mirror image's (default: the recipe's: on for synthetic)")
    evaluation.add_argument("--metric", choices=("cosine", "euclidean"), default=d.metric)
    evaluation.add_argument("--ranked-lists", type=int, default=d.ranked_lists,
                            help="queries whose ranked list is saved as a picture per evaluation")
    run = parser.add_argument_group("run")
    run.add_argument("--threads", type=int,
                     help="CPU threads of torch (default: torch's). On a CPU shared with other busy jobs, 1 avoids "
                          "threads waiting on each other (there, 10x faster than 2 threads on 2 cores)")
    run.add_argument("--seed", type=int, default=d.seed)
    run.add_argument("--device", choices=("cpu", "cuda"), help="default: cuda when available")
    run.add_argument("--amp", choices=AMP_MODES, default=d.amp, help="mixed precision on CUDA (default: %(default)s)")
    run.add_argument("--sync-bn", action="store_true", help="SyncBatchNorm across GPUs under torchrun")
    run.add_argument("--save-every", type=int, default=d.save_every, help="keep a checkpoint every N epochs")
    run.add_argument("--output-dir", default=d.output_dir, help="where run folders go (default: %(default)s)")
    run.add_argument("--run-name", help="run folder name after the date (default: <model>-<dataset>)")
    run.add_argument("--resume", metavar="RUN_OR_CHECKPOINT",
                     help="continue a run (its folder or a checkpoint) with its saved configuration")


def _config_from(args: argparse.Namespace) -> TrainConfig:
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    return TrainConfig(**{k: v for k, v in vars(args).items() if k in fields})


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m models", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser("train", help="train (and evaluate) a model; torchrun for several processes",
                                description="Train a re-id model. Launch with `torchrun --nproc_per_node N -m "
                                            "models train ...` for DistributedDataParallel.")
    _add_train_options(train)

    evaluate = commands.add_parser("eval", help="evaluate a checkpoint")
    evaluate.add_argument("checkpoint", help="a checkpoint written by train (e.g. runs/<run>/checkpoints/best.pt)")
    evaluate.add_argument("--dataset", choices=DATASET_NAMES, help="default: the one the checkpoint was trained on")
    evaluate.add_argument("--data-root", help="default: the training run's")
    evaluate.add_argument("--device", choices=("cpu", "cuda"))
    evaluate.add_argument("--flip", action="store_true", help="average features with the mirror image's")
    evaluate.add_argument("--rerank", action="store_true", help="k-reciprocal re-ranking (k1 20, k2 6, lambda 0.3)")
    evaluate.add_argument("--batch-size", type=int, default=64)
    evaluate.add_argument("--workers", type=int, default=1)

    synthetic = commands.add_parser("synthetic", help="draw the synthetic set (Market-1501 layout) and print its table")
    d = SyntheticConfig()
    synthetic.add_argument("--root", default="data", help="parent folder (default: %(default)s)")
    for field in dataclasses.fields(SyntheticConfig):
        synthetic.add_argument(f"--{field.name.replace('_', '-')}", type=int, default=getattr(d, field.name),
                               help="(default: %(default)s)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "threads", None):
        import torch

        torch.set_num_threads(args.threads)
    if args.command == "train":
        from .engine.pipeline import train

        train(_config_from(args), resume=args.resume)
    elif args.command == "eval":
        from .engine.pipeline import evaluate_checkpoint

        evaluate_checkpoint(args.checkpoint, args.dataset, args.data_root, args.device, args.flip, args.rerank,
                            args.batch_size, args.workers)
    else:
        from .data.datasets import load_market1501

        config = SyntheticConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(SyntheticConfig)})
        folder = make_synthetic_market(args.root, config, progress=True)
        print(load_market1501(folder).summary())
        print(f"train on it with: python -m models train --dataset market1501 --data-root {folder}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
