import socket

import pytest
import torch
import torch.multiprocessing as mp

from napari_ssmamba.model import load_checkpoint
from napari_ssmamba.training.config import FinetuneConfig
from napari_ssmamba.training.finetune import finetune


def _config(out, batch_size):
    # frozen BatchNorm: SyncBatchNorm runs only on CUDA, so on CPU ranks match one process only
    # when no layer normalises over the (per-rank) batch
    return FinetuneConfig(arch="ssmamba_test", out=str(out), epochs=2, batch_size=batch_size, lr=3e-3,
                          warmup_epochs=0.5, device="cpu", patience=None, freeze_bn=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank, world_size, port, out, train):
    import os

    import torch.distributed as dist

    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        finetune(_config(out, batch_size=16), train, None)
    finally:
        dist.destroy_process_group()


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed unavailable")
def test_two_gloo_processes_match_one_process(small_task, tmp_path, torch_threads):
    train, _ = small_task
    single = finetune(_config(tmp_path / "single", batch_size=16), train, None)
    mp.start_processes(_worker, args=(2, _free_port(), tmp_path / "ddp", train), nprocs=2, join=True,
                       start_method="fork")
    a, _ = load_checkpoint(single["checkpoint"])
    b, card = load_checkpoint(tmp_path / "ddp" / "model.safetensors")
    assert card.training["world_size"] == 2
    # the same updates up to float rounding of the gradient all-reduce (Adam rescales tiny grads)
    worst = max(float((x - y).abs().max()) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    assert worst < 1e-3, worst
