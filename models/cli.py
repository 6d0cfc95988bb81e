"""Command line: `python -m models {train,eval,extract,search,visualize,synthetic} --help`.

`python -m models train` with no options draws the built-in synthetic set,
scores the untrained RGA-Net, trains it for a few minutes on the CPU and
scores it again.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Sequence
from pathlib import Path

from .data.datasets import DATASETS
from .data.synthetic import SyntheticConfig, make_synthetic_market
from .engine.config import RECIPES, TrainConfig
from .engine.trainer import AMP_MODES
from .engine.zoo import MODEL_NAMES

DATASET_NAMES = ("synthetic", *DATASETS)


def dataset_names() -> tuple[str, ...]:
    """The built-in data sets and those added with register_dataset, when the parser is built."""
    return ("synthetic", *DATASETS)


def _int_list(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def _add_train_options(parser: argparse.ArgumentParser) -> None:
    d = TrainConfig()
    data = parser.add_argument_group("data")
    data.add_argument("--dataset", choices=dataset_names(), default=d.dataset,
                      help="data set (default: %(default)s, drawn under --data-root on first use); folder: "
                           "--data-root holds train/, query/, gallery/ (Market-1501 file names or one sub-folder "
                           "per identity); csv: --data-root holds train.csv, query.csv, gallery.csv (path,pid,camid)")
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
    model.add_argument("--pretrained", metavar="PATH", default=d.pretrained,
                       help="torchvision ResNet-50 ImageNet state_dict file for RGA-Net's trunk (never downloaded; "
                            "e.g. resnet50-0676ba61.pth). The rga recipe needs it for the published scores")
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
    run.add_argument("--checkpoint-interval", type=float, default=d.checkpoint_interval, metavar="SECONDS",
                     help="write last.pt (what --resume continues from) and curves.png at most this often, and at "
                          "every evaluation and at the end (default: %(default)s; 0: after every epoch). A ~390 MB "
                          "RGA-Net checkpoint costs about 1.5 s on a 2-core CPU")
    run.add_argument("--output-dir", default=d.output_dir, help="where run folders go (default: %(default)s)")
    run.add_argument("--tensorboard", action="store_true",
                     help="also write losses, lr, images/s and rank-1/mAP/mINP per evaluation to <run>/tensorboard "
                          "(needs the tensorboard extra)")
    run.add_argument("--run-name", help="run folder name after the date (default: <model>-<dataset>)")
    run.add_argument("--resume", metavar="RUN_OR_CHECKPOINT",
                     help="continue a run (its folder or a checkpoint) with its saved configuration")


def _config_from(args: argparse.Namespace) -> TrainConfig:
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    return TrainConfig(**{k: v for k, v in vars(args).items() if k in fields})


def _checkpoint_command(commands, name: str, help: str, description: str) -> argparse.ArgumentParser:
    """A command whose first argument is a checkpoint of any of the projects load_model reads."""
    parser = commands.add_parser(name, help=help, description=description)
    parser.add_argument("checkpoint", help="this project's checkpoint, or the official RGA code's / torchreid's")
    return parser


def _add_model_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("network (what other projects' checkpoints cannot tell)")
    group.add_argument("--model", choices=MODEL_NAMES, help="default: recognised from the file")
    group.add_argument("--height", type=int, help="input height (default: the checkpoint's, else 256; hacnn 160)")
    group.add_argument("--width", type=int, help="input width (default: the checkpoint's, else 128; hacnn 64)")
    group.add_argument("--scale", type=int, help="RGA cha_ratio/spa_ratio (default: the checkpoint's or the file's)")
    group.add_argument("--d-scale", type=int, help="RGA down_ratio (default: the checkpoint's or the file's)")
    group.add_argument("--trust-checkpoint", action="store_true",
                       help="load files that hold pickled Python objects besides tensors (only from a source you "
                            "trust: unpickling can run code)")


def _add_extractor_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("features")
    group.add_argument("--no-flip", action="store_true", help="do not average with the mirror image's features")
    group.add_argument("--batch-size", type=int, default=64, help="(default: %(default)s)")
    group.add_argument("--device", default="auto", help="auto, cpu or cuda (default: %(default)s)")
    group.add_argument("--amp", choices=AMP_MODES, default="auto",
                       help="mixed precision on CUDA (auto: bfloat16 there, off on the CPU)")


def _extractor(args: argparse.Namespace):
    from .inference.extract import FeatureExtractor

    return FeatureExtractor(args.checkpoint, device=args.device, flip=not args.no_flip, batch_size=args.batch_size,
                            amp=args.amp, model=args.model, height=args.height, width=args.width,
                            scale=args.scale, d_scale=args.d_scale, trust=args.trust_checkpoint, progress=True)


def _run_extract(args: argparse.Namespace) -> None:
    import numpy as np

    from .inference.extract import image_files

    extractor = _extractor(args)
    files = image_files(args.images)
    features = extractor([str(f) for f in files])
    out = Path(args.out)
    if out.suffix != ".npy":
        out = out.with_name(out.name + ".npy")
    out.parent.mkdir(parents=True, exist_ok=True)
    np.save(out, features.numpy())
    listing = out.with_suffix(".txt")
    listing.write_text("".join(f"{f}\n" for f in files))
    print(f"{extractor}\n{features.shape[0]} x {features.shape[1]} features -> {out} (paths: {listing})")


def _run_search(args: argparse.Namespace) -> None:
    from .inference.search import search, write_search

    extractor = _extractor(args)
    metric = args.metric or getattr(extractor, "metric", "cosine")
    result = search(extractor, args.query, args.gallery, args.topk, args.rerank, metric)
    table = write_search(result, args.out, pictures=not args.no_pictures)
    for i, query in enumerate(result.query[:5]):
        best = ", ".join(f"{Path(result.gallery[j]).name} ({d:.3f})"
                         for j, d in zip(result.indices[i, :3].tolist(), result.distances[i, :3].tolist()))
        print(f"{query}: {best}")
    more = f" (first 5 of {len(result.query)} shown)" if len(result.query) > 5 else ""
    print(f"{len(result.query)} queries x {len(result.gallery)} gallery pictures, top {result.indices.shape[1]}, "
          f"{metric} distance{', re-ranked' if args.rerank else ''}{more} -> {table}")


def _run_visualize(args: argparse.Namespace) -> None:
    from .inference.attention import visualize
    from .inference.extract import image_files
    from .inference.loading import load_model

    loaded = load_model(args.checkpoint, args.model, args.height, args.width, scale=args.scale,
                        d_scale=args.d_scale, trust=args.trust_checkpoint)
    files = image_files(args.images)
    saved = visualize(loaded.model, loaded.height, loaded.width, files, args.out, args.batch_size)
    print(f"{loaded.name} ({loaded.source} checkpoint): attention of {len(saved)} pictures -> {args.out}/ "
          f"(figures: {saved[0].name}, ...; every map: attention.pt)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m models", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser("train", help="train (and evaluate) a model; torchrun for several processes",
                                description="Train a re-id model. Launch with `torchrun --nproc_per_node N -m "
                                            "models train ...` for DistributedDataParallel.")
    _add_train_options(train)

    evaluate = commands.add_parser(
        "eval", help="evaluate a checkpoint (this project's, the official RGA code's or torchreid's HA-CNN)",
        description="Evaluate a checkpoint on a data set: rank-1/5/10, mAP, mINP. Other projects' checkpoints "
                    "(checkpoint_*.pth.tar of the official RGA code, torchreid's HA-CNN model.pth.tar-N) hold no "
                    "configuration: give --dataset, and --height/--width for RGA-Net when not 256x128.")
    evaluate.add_argument("checkpoint", help="e.g. runs/<run>/checkpoints/best.pt, or another project's file")
    evaluate.add_argument("--dataset", choices=dataset_names(), help="default: the one the checkpoint was trained on")
    evaluate.add_argument("--data-root", help="default: the training run's (data for other projects' files)")
    _add_model_options(evaluate)
    evaluate.add_argument("--device", choices=("cpu", "cuda"))
    evaluate.add_argument("--flip", action="store_true", help="average features with the mirror image's")
    evaluate.add_argument("--rerank", action="store_true", help="k-reciprocal re-ranking (k1 20, k2 6, lambda 0.3)")
    evaluate.add_argument("--metric", choices=("cosine", "euclidean"), help="default: the checkpoint's (cosine)")
    evaluate.add_argument("--protocol", choices=("market", "cuhk03"), default="market",
                          help="market: same-camera matches discarded; cuhk03: the classic single-gallery-shot "
                               "protocol, 10 repeats (default: %(default)s)")
    evaluate.add_argument("--ranked-lists", type=int, default=0, metavar="N",
                          help="save the top-10 of N queries as pictures into --ranked-lists-dir")
    evaluate.add_argument("--ranked-lists-dir", default="ranked_lists", help="(default: %(default)s)")
    evaluate.add_argument("--save-features", metavar="PATH",
                          help="an .npz file with the query and gallery features, pids, cameras and paths")
    evaluate.add_argument("--batch-size", type=int, default=64)
    evaluate.add_argument("--workers", type=int, default=1)

    extract = _checkpoint_command(
        commands, "extract", help="features of pictures from a checkpoint",
        description="Write the features of pictures (files or folders, searched recursively) as an [N, D] float32 "
                    "array to --out (.npy), and the pictures' paths, one per line, beside it (.txt).")
    extract.add_argument("images", nargs="+", help="picture files or folders")
    extract.add_argument("--out", default="features.npy", help="(default: %(default)s)")
    _add_model_options(extract)
    _add_extractor_options(extract)

    search = _checkpoint_command(
        commands, "search", help="rank gallery pictures for query pictures",
        description="For each query picture, the --topk closest gallery pictures: --out/ranked.csv (query, rank, "
                    "gallery, distance) and one picture strip per query. Memory stays bounded: the distances are "
                    "computed one chunk of queries at a time.")
    search.add_argument("--query", nargs="+", required=True, help="query picture files or folders")
    search.add_argument("--gallery", nargs="+", required=True, help="gallery picture files or folders")
    search.add_argument("--topk", type=int, default=10, help="(default: %(default)s)")
    search.add_argument("--rerank", action="store_true", help="k-reciprocal re-ranking (k1 20, k2 6, lambda 0.3)")
    search.add_argument("--metric", choices=("cosine", "euclidean"), help="default: the checkpoint's (cosine)")
    search.add_argument("--out", default="ranked", help="output folder (default: %(default)s)")
    search.add_argument("--no-pictures", action="store_true", help="write the CSV only")
    _add_model_options(search)
    _add_extractor_options(search)

    visualize = _checkpoint_command(
        commands, "visualize", help="attention maps of a checkpoint over pictures",
        description="Draw each stage's attention over the pictures (RGA-Net: the RGA-S spatial gates; HA-CNN: the "
                    "soft attention), one figure per picture in --out, and every map (RGA-C channel weights and "
                    "HA-CNN's regions too) in --out/attention.pt.")
    visualize.add_argument("images", nargs="+", help="picture files or folders")
    visualize.add_argument("--out", default="maps", help="output folder (default: %(default)s)")
    visualize.add_argument("--batch-size", type=int, default=16)
    _add_model_options(visualize)

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
                            args.batch_size, args.workers, model=args.model, height=args.height, width=args.width,
                            scale=args.scale, d_scale=args.d_scale,
                            protocol=args.protocol, metric=args.metric, ranked_lists=args.ranked_lists,
                            ranked_lists_dir=args.ranked_lists_dir, save_features=args.save_features,
                            trust=args.trust_checkpoint)
    elif args.command == "extract":
        _run_extract(args)
    elif args.command == "search":
        _run_search(args)
    elif args.command == "visualize":
        _run_visualize(args)
    else:
        from .data.datasets import load_market1501

        config = SyntheticConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(SyntheticConfig)})
        folder = make_synthetic_market(args.root, config, progress=True)
        print(load_market1501(folder).summary())
        print(f"train on it with: python -m models train --dataset market1501 --data-root {folder}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
