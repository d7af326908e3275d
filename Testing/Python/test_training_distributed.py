"""torchrun support on CPU: 2 processes with the gloo backend, folds spread over ranks and DDP in a fold."""

import json
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from training_phantoms import TINY_RUN, write_csv_dataset

from pocketseg_core.training import config_from_preset, run_cross_validation
from pocketseg_core.training.distributed import DistributedContext


def _free_port() -> int:
    with socket.socket() as handle:
        handle.bind(("127.0.0.1", 0))
        return handle.getsockname()[1]


class _Recorder:
    def __init__(self):
        self.epochs = []

    def on_epoch_end(self, fold, epoch, metrics):
        self.epochs.append({"fold": fold, "epoch": epoch, **metrics})


def _worker(rank, world_size, port, dataset, run_dir, mode, record_dir):
    import os

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        config = config_from_preset(
            "pocketnet-nfbs", dataset=dataset, **{**TINY_RUN, "epochs": 1, "distributed_mode": mode}
        )
        recorder = _Recorder()
        result = run_cross_validation(
            config, run_dir, callbacks=recorder, distributed=DistributedContext(rank, world_size, rank, mode)
        )
        record = {"epochs": recorder.epochs, "cases": len(result.per_case)}
        with open(f"{record_dir}/rank{rank}.json", "w", encoding="utf-8") as handle:
            json.dump(record, handle)
    finally:
        dist.destroy_process_group()


def _spawn(tmp_path, mode):
    dataset = write_csv_dataset(tmp_path / "data", subjects=4)
    run_dir = tmp_path / "run"
    mp.spawn(
        _worker, args=(2, _free_port(), str(dataset), str(run_dir), mode, str(tmp_path)), nprocs=2, join=True
    )
    records = [json.loads((tmp_path / f"rank{rank}.json").read_text(encoding="utf-8")) for rank in range(2)]
    return run_dir, records


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not available in this build")
def test_folds_spread_over_two_ranks(tmp_path):
    run_dir, records = _spawn(tmp_path, "folds")
    assert [(e["fold"], e["epoch"]) for e in records[0]["epochs"]] == [(1, 1)]
    assert [(e["fold"], e["epoch"]) for e in records[1]["epochs"]] == [(2, 1)]
    assert records[0]["cases"] == 4 and records[1]["cases"] == 0  # rank 0 writes the report
    assert (run_dir / "model" / "weights.pt").is_file() and not (run_dir / "INCOMPLETE").exists()


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not available in this build")
def test_ddp_inside_each_fold(tmp_path):
    run_dir, records = _spawn(tmp_path, "ddp")
    first, second = records[0]["epochs"], records[1]["epochs"]
    assert (
        [(e["fold"], e["epoch"]) for e in first]
        == [(1, 1), (2, 1)]
        == [(e["fold"], e["epoch"]) for e in second]
    )
    for a, b in zip(first, second, strict=True):
        assert a["train_loss"] != b["train_loss"]  # each rank trained on its own patches ...
        assert a["val_dice"] == b["val_dice"] and a["val_loss"] == pytest.approx(b["val_loss"], abs=1e-6)
        # ... yet the weights stayed identical (gradients all-reduced), so validation agrees
    assert records[0]["cases"] == 4 and (run_dir / "model" / "bundle.json").is_file()
