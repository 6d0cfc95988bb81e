"""DistributedDataParallel on the CPU (gloo, 2 processes): one training step and the gathered evaluation
equal a single process working on the same global batch."""

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from models.data.datasets import load_market1501
from models.engine.config import TrainConfig
from models.engine.distributed import gather_for_loss, gather_rows, init_distributed
from models.engine.evaluator import extract_features
from models.engine.trainer import Trainer
from models.engine.objectives import BNNeckObjective
from tests.models.tiny_models import TinyBNNeckNet

WORLD_SIZE = 2


def config(num_identities: int) -> TrainConfig:
    # SGD: the first Adam step is about lr * sign(gradient), which would turn rounding noise into differences.
    return TrainConfig(dataset="market1501", height=64, width=32, epochs=1, num_identities=num_identities,
                       num_instances=2, optimizer="sgd", lr=0.05, warmup_epochs=0, milestones=[], workers=0,
                       eval_before=False, ranked_lists=0, device="cpu").resolved()


def run_one_epoch(data_root: str, num_identities: int) -> dict:
    torch.set_num_threads(1)
    data = load_market1501(data_root)
    ctx = init_distributed("cpu")
    torch.manual_seed(0)
    # GroupNorm: batch statistics would differ between a rank's half batch and the whole batch.
    model = TinyBNNeckNet(data.num_train_pids, norm="group")
    trainer = Trainer(config(num_identities), model, BNNeckObjective(), data, ctx, None, log=lambda _: None)
    assert len(trainer.sampler) == 1
    record = trainer.train_epoch()
    results = trainer.evaluate("test", ranked_lists=0)
    features = extract_features(trainer.model, trainer.objective, trainer.query_loader, ctx)
    return {"state": {k: v.clone() for k, v in model.state_dict().items()}, "loss": record["loss"],
            "triplet": record["triplet"], "features": features["feat"],
            "mAP": None if results is None else float(results["feat"].mAP)}


def ddp_worker(rank: int, port: int, data_root: str, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(WORLD_SIZE),
                      LOCAL_RANK=str(rank))
    try:
        result = run_one_epoch(data_root, num_identities=8)
        if rank == 0:
            torch.save(result, out)
    finally:
        dist.destroy_process_group()


def gather_worker(rank: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(WORLD_SIZE),
                      LOCAL_RANK=str(rank))
    init_distributed("cpu")
    try:
        rows = torch.arange(3 + rank * 2, dtype=torch.float32)[:, None] + 10 * rank
        x = torch.full((2, 3), float(rank + 1), requires_grad=True)
        gathered = gather_for_loss(x)
        (gathered * torch.arange(4.0)[:, None]).sum().backward()
        result = {"rows": gather_rows(rows), "gathered": gathered.detach(), "grad": x.grad}
        torch.save(result, f"{out}.{rank}")
    finally:
        dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_gather_helpers(tmp_path):
    out = str(tmp_path / "gather")
    mp.spawn(gather_worker, args=(free_port(), out), nprocs=WORLD_SIZE)
    for rank in range(WORLD_SIZE):
        result = torch.load(f"{out}.{rank}")
        # Rows of different counts, in rank order.
        assert result["rows"].squeeze(1).tolist() == [0, 1, 2, 10, 11, 12, 13, 14]
        assert result["gathered"].tolist() == [[1.0] * 3] * 2 + [[2.0] * 3] * 2
        # Each rank computed the same loss: its slice gets the summed gradient of both copies.
        assert result["grad"].tolist() == ([[0.0] * 3, [2.0] * 3] if rank == 0 else [[4.0] * 3, [6.0] * 3])


@pytest.mark.slow
def test_ddp_step_equals_single_process_step_on_the_global_batch(small_set, tmp_path):
    out = str(tmp_path / "ddp.pt")
    mp.spawn(ddp_worker, args=(free_port(), str(small_set.root), out), nprocs=WORLD_SIZE)
    ddp = torch.load(out)
    single = run_one_epoch(str(small_set.root), num_identities=8 * WORLD_SIZE)
    torch.manual_seed(0)
    initial = TinyBNNeckNet(small_set.num_train_pids, norm="group").state_dict()
    for key, value in single["state"].items():
        torch.testing.assert_close(ddp["state"][key], value, rtol=1e-5, atol=1e-6, msg=key)
    # The step changed the weights: the comparison is not of two untouched models.
    assert not torch.equal(single["state"]["cls.weight"], initial["cls.weight"])
    assert ddp["loss"] == pytest.approx(single["loss"], rel=1e-5)
    assert ddp["triplet"] == pytest.approx(single["triplet"], rel=1e-5)
    torch.testing.assert_close(ddp["features"], single["features"], rtol=1e-5, atol=1e-6)
    assert ddp["features"].shape[0] == len(small_set.query)
    assert ddp["mAP"] == pytest.approx(single["mAP"], abs=1e-6)
