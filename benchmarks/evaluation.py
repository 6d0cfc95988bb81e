"""Time and peak memory of re-id evaluation and re-ranking at Market-1501 and MSMT17 sizes, on the CPU,
each as a multiple of the matrix products it cannot avoid, timed side by side in the same process.

    python -m benchmarks.evaluation [--quick] [--part evaluate|rerank|all] [--rounds N] [--case NAME ...]

Evaluation cases: `evaluate_features` (distances, CMC, mAP, mINP) at each data set's size, for
two kinds of features and both metrics:

- easy: identity-structured features (identity centroids, camera offsets, per-image noise of
  varying strength), a ranking problem like a trained model's;
- random: independent Gaussian features with the same labels, the worst case of the ranking:
  true matches lie all through every query's ranking.

Each evaluation is timed against its distance product, the GEMMs that `evaluate_features`
computes (one [G, D] x [D, chunk] product per chunk of queries), timed alone in the same process
in interleaved rounds (product, evaluation, product, evaluation, ...): the reported multiple is
the median over the rounds of evaluation time / product time, so that the load of a shared
machine hits both alike.

Re-ranking cases: k-reciprocal re-ranking from features (k1 20, k2 6, lambda 0.3), by
`re_ranking_rows`, block by block of queries, each block evaluated (`evaluate_rank`) as it comes;
the re-ranking time leaves those evaluations out (they are in the JSON). It is timed against its
k-nearest-neighbour products (`models.evaluation.rerank.knn_products`: the same GEMMs, every pair of
points once, then queries x gallery once more for the final distances), timed alone in the same
process just before.

Every case runs in a fresh subprocess, so that its peak resident memory (`ru_maxrss`) is its own:
the child builds its inputs, records its memory, runs the case and reports the peak. Results go to
benchmarks/results/evaluation-cpu.{json,md}. `--quick` runs every case at 1/8 of the sizes and
writes evaluation-cpu-quick.{json,md} instead.
"""

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from models.evaluation import (
    RankResult,
    evaluate_features,
    evaluate_rank,
    re_ranking_rows,
)
from models.evaluation.evaluate import default_chunk as evaluation_chunk
from models.evaluation.rerank import default_chunk as re_ranking_chunk
from models.evaluation.rerank import knn_products

DIM = 2048
RESULTS = Path(__file__).resolve().parent / "results"

# Sizes of the test splits (docs/reid.md). Market's gallery holds distractors (pid 0) besides its 750 ids.
DATASETS = {
    "market1501": {"num_ids": 750, "num_query": 3368, "num_gallery": 15913, "num_cams": 6, "num_distractors": 2798},
    "msmt17": {"num_ids": 3060, "num_query": 11659, "num_gallery": 82161, "num_cams": 15, "num_distractors": 0},
}
EVALUATION_ROUNDS = {"market1501": 3, "msmt17": 2}


def _cases() -> dict[str, dict]:
    cases = {"gemm": {"kind": "gemm"}}
    for dataset in DATASETS:
        for features in ("easy", "random"):
            for metric in ("cosine", "euclidean"):
                cases[f"{dataset}-{features}-{metric}"] = {
                    "kind": "evaluate", "dataset": dataset, "features": features, "metric": metric,
                    "rounds": EVALUATION_ROUNDS[dataset],
                }
    for dataset in DATASETS:
        cases[f"{dataset}-rerank"] = {"kind": "rerank", "dataset": dataset, "features": "easy", "metric": "cosine",
                                      "rounds": 1}
    return cases


CASES = _cases()


def make_problem(num_ids, num_query, num_gallery, num_cams, num_distractors, centroid_scale=0.5, dim=DIM, seed=0,
                 features="easy"):
    """Synthetic features [Q, dim], [G, dim] and labels; generated in place, without large temporaries.

    Every identity has at least one query and one gallery image, is seen by two
    to six cameras, and has a popularity drawn from a log-normal. An "easy"
    feature is its identity's centroid plus its camera's offset plus Gaussian
    noise whose scale is log-normal per image (occlusion, blur), which gives the
    heavy tail of hard queries of real models. A "random" feature is Gaussian
    noise alone, with the same labels: the worst case of the ranking.
    """
    g = torch.Generator().manual_seed(seed)
    popularity = torch.exp(0.5 * torch.randn(num_ids, generator=g))

    def identities(n):
        extra = torch.multinomial(popularity, n - num_ids, replacement=True, generator=g)
        return torch.cat([torch.arange(num_ids), extra])[torch.randperm(n, generator=g)]

    cameras_of = torch.stack([torch.randperm(num_cams, generator=g) for _ in range(num_ids)])
    num_cameras_of = torch.randint(2, min(num_cams, 6) + 1, (num_ids,), generator=g)

    def cameras(pids):
        pick = (torch.rand(pids.numel(), generator=g) * num_cameras_of[pids]).long()
        return cameras_of[pids, pick]

    q_pids = identities(num_query)
    g_pids = identities(num_gallery - num_distractors)
    q_camids, g_camids = cameras(q_pids), cameras(g_pids)
    # Distractors get pid 0 and identities 1..num_ids, as in Market-1501.
    q_pids += 1
    g_pids = torch.cat([g_pids + 1, torch.zeros(num_distractors, dtype=torch.int64)])
    g_camids = torch.cat([g_camids, torch.randint(0, num_cams, (num_distractors,), generator=g)])
    centroids = centroid_scale * torch.randn(num_ids + 1, dim, generator=g)
    camera_offsets = 0.3 * torch.randn(num_cams, dim, generator=g)

    def make(pids, camids):
        out = torch.empty(pids.numel(), dim)
        for start in range(0, pids.numel(), 4096):
            block = out[start : start + 4096]
            torch.randn(block.shape, generator=g, out=block)
            if features == "easy":
                block.mul_(torch.exp(0.35 * torch.randn(block.shape[0], 1, generator=g)))
                block.add_(centroids[pids[start : start + 4096]]).add_(camera_offsets[camids[start : start + 4096]])
        return out

    return make(q_pids, q_camids), make(g_pids, g_camids), q_pids, g_pids, q_camids, g_camids


def _rss_mib() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("VmRSS not found in /proc/self/status")


def _peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _timed(work) -> tuple[float, float, object]:
    start, start_cpu = time.perf_counter(), time.process_time()
    result = work()
    return time.perf_counter() - start, time.process_time() - start_cpu, result


def evaluation_product(qf: torch.Tensor, gf: torch.Tensor, chunk: int) -> None:
    """The GEMMs of `evaluate_features`: gallery x query chunk, one [G, chunk] product per chunk."""
    for start in range(0, qf.shape[0], chunk):
        torch.mm(gf, qf[start : start + chunk].t())


def run_case(name: str, scale: int) -> dict:
    """Run one case in this process and return its measurements."""
    case = CASES[name]
    if case["kind"] == "gemm":
        a, b = torch.randn(2048, DIM), torch.randn(16384, DIM)
        torch.mm(b, a.t())
        times = []
        for _ in range(3):
            start = time.perf_counter()
            torch.mm(b, a.t())
            times.append(time.perf_counter() - start)
        return {"case": name, "shape": "[16384, 2048] x [2048, 2048] float32",
                "gflops": 2 * 2048 * 16384 * DIM / min(times) / 1e9}

    sizes = {k: v // scale if k != "num_cams" else v for k, v in DATASETS[case["dataset"]].items()}
    inputs = make_problem(**sizes, features=case["features"])
    qf, gf = inputs[0], inputs[1]
    num_points = qf.shape[0] + gf.shape[0]
    baseline_rss, baseline_peak = _rss_mib(), _peak_mib()
    if case["kind"] == "evaluate":
        chunk = min(evaluation_chunk(gf.shape[0]), qf.shape[0])
        product_flop = 2.0 * qf.shape[0] * gf.shape[0] * qf.shape[1]

        def product():
            return evaluation_product(qf, gf, chunk)

        def work():
            return evaluate_features(*inputs, metric=case["metric"])
    else:
        chunk = re_ranking_chunk(num_points)
        product_flop = None
        evaluation_s = []

        def product():
            return knn_products(qf, gf)

        def work():
            # Re-ranking, block by block of queries; each block evaluated as it comes, timed apart.
            parts, spent = [], 0.0
            for start, block in re_ranking_rows(qf, gf, case["metric"], chunk=chunk):
                begin = time.perf_counter()
                labels = (t[start : start + block.shape[0]] for t in (inputs[2], inputs[4]))
                q_pids, q_camids = labels
                parts.append(evaluate_rank(block, q_pids, inputs[3], q_camids, inputs[5]))
                spent += time.perf_counter() - begin
            evaluation_s.append(spent)
            return _combined(parts)

    rounds = []
    for _ in range(case["rounds"]):
        product_s, _, flop = _timed(product)
        time_s, cpu_s, result = _timed(work)
        rounds.append({"product_s": product_s, "time_s": time_s, "cpu_time_s": cpu_s, "multiple": time_s / product_s})
        if case["kind"] == "rerank":
            # The re-ranking alone: the evaluation of its blocks left out (it is in the JSON).
            rounds[-1].update(evaluation_s=evaluation_s[-1], time_s=time_s - evaluation_s[-1],
                              multiple=(time_s - evaluation_s[-1]) / product_s)
        product_flop = flop if product_flop is None else product_flop
    peak = _peak_mib()
    report = {
        "case": name,
        "kind": case["kind"],
        "dataset": case["dataset"],
        "features": case["features"],
        "metric": case["metric"],
        "num_query": qf.shape[0],
        "num_gallery": gf.shape[0],
        "num_points": num_points,
        "dim": qf.shape[1],
        "chunk_rows": chunk,
        "rounds": rounds,
        "time_s": statistics.median(r["time_s"] for r in rounds),
        "product_s": statistics.median(r["product_s"] for r in rounds),
        "multiple": statistics.median(r["multiple"] for r in rounds),
        "product_tflop": product_flop / 1e12,
        "baseline_rss_mib": baseline_rss,
        "baseline_peak_mib": baseline_peak,
        "peak_rss_mib": peak,
        "extra_peak_mib": peak - baseline_rss,
        **_metrics(result),
    }
    return report


def _combined(parts: list) -> RankResult:
    """One result from the results of consecutive blocks of queries (each valid query weighs the same)."""
    valid = [p.num_valid_queries for p in parts]
    total = sum(valid)
    return RankResult(
        cmc=sum(p.cmc * n for p, n in zip(parts, valid)) / total,
        mAP=sum(p.mAP * n for p, n in zip(parts, valid)) / total,
        mINP=sum(p.mINP * n for p, n in zip(parts, valid)) / total,
        num_valid_queries=total,
        num_skipped_queries=sum(p.num_skipped_queries for p in parts),
    )


def _metrics(result) -> dict:
    return {
        "rank1": float(result.cmc[0]),
        "rank5": float(result.cmc[4]),
        "mAP": result.mAP,
        "mINP": result.mINP,
        "skipped_queries": result.num_skipped_queries,
    }


def _cpu_description() -> str:
    with open("/proc/cpuinfo") as cpuinfo:
        models = [line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")]
    return f"{models[0] if models else platform.processor()} ({os.cpu_count()} cores)"


def _environment_lines(command: str, environment: dict) -> list[str]:
    return [
        f"Command: `{command}`",
        "",
        f"- Device: {environment['cpu']}; {environment['note']}",
        f"- torch {environment['torch']}, {environment['threads']} threads",
        f"- Load average before / after: {environment['load_before']} / {environment['load_after']}",
        f"- float32 GEMM throughput at the start: {environment['gemm_gflops']:.0f} GFLOP/s ({environment['gemm_shape']})",
        "",
    ]


def _write_markdown(path: Path, commands: dict, environments: dict, reports: list[dict]) -> None:
    lines = [
        "# Re-id evaluation benchmark (CPU)",
        "",
        (
            "Synthetic features, 2048-d, float32: easy = identity-structured (identity centroids, camera "
            "offsets, per-image noise), random = Gaussian noise with the same labels (the ranking's worst "
            "case: true matches all through every ranking). Each case ran in a fresh process; peak = "
            "`ru_maxrss` of that process, extra = peak minus its resident memory once its inputs existed."
        ),
        "",
        "## Evaluation (`evaluate_features`: distances, CMC, mAP, mINP)",
        "",
        *_environment_lines(commands["evaluate"], environments["evaluate"]),
        (
            "Product: the distance GEMMs alone (one [G, 2048] x [2048, chunk] product per chunk of queries), "
            "timed in the same process, interleaved with the evaluation; multiple: median over the rounds of "
            "evaluation time / product time."
        ),
        "",
        "| data set size | features | metric | Q x G | chunk rows | product (s) | evaluation (s) | multiple | per-round multiples | peak RSS (MiB) | extra (MiB) | result |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in reports:
        if r["kind"] != "evaluate":
            continue
        multiples = ", ".join(f"{x['multiple']:.2f}" for x in r["rounds"])
        lines.append(
            f"| {r['dataset']} | {r['features']} | {r['metric']} | {r['num_query']:,} x {r['num_gallery']:,} "
            f"| {r['chunk_rows']} | {r['product_s']:.2f} | {r['time_s']:.2f} | **{r['multiple']:.2f}x** | {multiples} "
            f"| {r['peak_rss_mib']:.0f} | {r['extra_peak_mib']:.0f} | {_result_text(r)} |"
        )
    lines += [
        "",
        "## k-reciprocal re-ranking (`re_ranking_rows`: from features, block by block of queries)",
        "",
        *_environment_lines(commands["rerank"], environments["rerank"]),
        (
            "k1 20, k2 6, lambda 0.3, cosine, easy features. Products: the k-nearest-neighbour GEMMs alone "
            "(every pair of points once, then queries x gallery once more for the final distances), timed in "
            "the same process just before; multiple: re-ranking time / product time. Re-ranking time: without "
            "the evaluation of its blocks (the evaluation column), which ran as each block came; peak memory "
            "includes both."
        ),
        "",
        "| data set size | points | k-NN products (s) | re-ranking (s) | multiple | evaluation (s) | peak RSS (MiB) | inputs RSS (MiB) | extra (MiB) | result after re-ranking |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in reports:
        if r["kind"] != "rerank":
            continue
        lines.append(
            f"| {r['dataset']} | {r['num_query']:,} + {r['num_gallery']:,} | {r['product_s']:.1f} | {r['time_s']:.1f} "
            f"| **{r['multiple']:.2f}x** | {r['rounds'][0]['evaluation_s']:.1f} | {r['peak_rss_mib']:.0f} "
            f"| {r['baseline_rss_mib']:.0f} | {r['extra_peak_mib']:.0f} "
            f"| {_result_text(r)} |"
        )
    lines.append("")
    path.write_text("\n".join(lines))


def _result_text(r: dict) -> str:
    return f"R1 {100 * r['rank1']:.1f}, mAP {100 * r['mAP']:.1f}, mINP {100 * r['mINP']:.1f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="every case at 1/8 of the sizes")
    parser.add_argument("--part", choices=("evaluate", "rerank", "all"), default="all")
    parser.add_argument("--case", nargs="*", choices=sorted(CASES), help="only these cases (nothing is written)")
    parser.add_argument("--rounds", type=int, help="rounds per case instead of the defaults")
    parser.add_argument("--note", default="", help="a line on the machine's load, written into the results")
    parser.add_argument("--child", choices=sorted(CASES), help=argparse.SUPPRESS)
    args = parser.parse_args()
    scale = 8 if args.quick else 1
    if args.rounds is not None:
        for case in CASES.values():
            case["rounds"] = args.rounds
    if args.child:
        print(json.dumps(run_case(args.child, scale)))
        return

    names = args.case or [n for n, c in CASES.items() if c["kind"] == "gemm" or args.part in ("all", c["kind"])]
    if "gemm" not in names:
        names = ["gemm", *names]
    command = "python -m benchmarks.evaluation" + (" --quick" if args.quick else "") + (
        f" --part {args.part}" if args.part != "all" else "") + (f" --rounds {args.rounds}" if args.rounds else "")
    load_before = " ".join(f"{x:.2f}" for x in os.getloadavg())
    reports = []
    for name in names:
        child = [sys.executable, "-m", "benchmarks.evaluation", "--child", name] + (["--quick"] if args.quick else [])
        child += ["--rounds", str(args.rounds)] if args.rounds is not None else []
        output = subprocess.run(child, check=True, capture_output=True, text=True).stdout
        reports.append(json.loads(output.strip().splitlines()[-1]))
        print(json.dumps(reports[-1]), flush=True)
    gemm = reports.pop(0)
    if args.case:
        return
    environment = {
        "cpu": _cpu_description(),
        "note": args.note or "load not noted",
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "load_before": load_before,
        "load_after": " ".join(f"{x:.2f}" for x in os.getloadavg()),
        "gemm_gflops": gemm["gflops"],
        "gemm_shape": gemm["shape"],
    }
    RESULTS.mkdir(exist_ok=True)
    stem = "evaluation-cpu-quick" if args.quick else "evaluation-cpu"
    parts = ("evaluate", "rerank") if args.part == "all" else (args.part,)
    commands = {part: command for part in parts}
    environments = {part: environment for part in parts}
    previous_path = RESULTS / f"{stem}.json"
    if args.part != "all" and previous_path.exists():
        # One part rerun: the other part's cases, command and environment stay as they were.
        previous = json.loads(previous_path.read_text())
        for part in ("evaluate", "rerank"):
            if part in parts:
                continue
            commands[part] = previous.get("commands", {}).get(part, previous.get("command", ""))
            environments[part] = previous.get("environments", {}).get(part, previous.get("environment"))
            reports += [case for case in previous["cases"] if case["kind"] == part]
    (RESULTS / f"{stem}.json").write_text(
        json.dumps({"commands": commands, "environments": environments, "cases": reports}, indent=2) + "\n"
    )
    if set(commands) == {"evaluate", "rerank"}:
        _write_markdown(RESULTS / f"{stem}.md", commands, environments, reports)
    print(f"wrote {RESULTS / stem}.json and .md")


if __name__ == "__main__":
    main()
