"""momentum.torch.SGD under DistributedDataParallel and ZeroRedundancyOptimizer.

Two gloo processes on localhost each train on half of every batch; the
result must match one process training on the whole batch (DDP averages the
two halves' gradients, which is the gradient of the whole batch's mean loss).
"""
from __future__ import annotations

import os
import socket
import time
from datetime import timedelta
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
dist = pytest.importorskip("torch.distributed")
if not dist.is_available() or not dist.is_gloo_available():
    pytest.skip("torch.distributed with gloo is not available", allow_module_level=True)

import torch.multiprocessing as mp  # noqa: E402
from torch.distributed.optim import ZeroRedundancyOptimizer  # noqa: E402
from torch.nn.parallel import DistributedDataParallel  # noqa: E402

from momentum.torch import SGD  # noqa: E402
from torch_helpers import assert_same, flat_params, make_data, make_model, mse  # noqa: E402

WORLD = 2
STEPS = 20
DTYPE = torch.float64
HYPER = dict(lr=0.05, momentum=0.9, weight_decay=1e-2)
TIMEOUT = 60.0  # seconds for the whole two-process run; it takes ~5 s
# float64 throughout; the two halves' gradients are summed by gloo where one
# process sums the whole batch, a different rounding order of ~1e-16 relative.
RTOL = 1e-10


def free_port() -> int:
    """A TCP port no one listens on now (the OS picks it for port 0)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def train_rank(rank: int, port: int, out: str) -> None:
    """One rank: DDP + our SGD, then DDP + ZeRO over our SGD; saves the results."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port),
                      GLOO_SOCKET_IFNAME="lo")
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD,
                            timeout=timedelta(seconds=TIMEOUT))
    try:
        x, y = make_data(DTYPE)
        x, y = x.chunk(WORLD)[rank], y.chunk(WORLD)[rank]
        results = {}
        for name in ("ddp", "zero"):
            model = make_model(DTYPE)
            ddp = DistributedDataParallel(model)
            opt = (SGD(ddp.parameters(), **HYPER) if name == "ddp" else
                   ZeroRedundancyOptimizer(ddp.parameters(), optimizer_class=SGD, **HYPER))
            for _ in range(STEPS):
                opt.zero_grad()
                mse(ddp, x, y).backward()
                opt.step()
            results[name] = flat_params(model)
        torch.save(results, Path(out) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def run_two_ranks(out: Path) -> None:
    """Start both ranks and wait at most TIMEOUT seconds, retrying on a new
    port if another process took the chosen one in the meantime."""
    for attempt in range(3):
        ctx = mp.start_processes(train_rank, args=(free_port(), str(out)),
                                 nprocs=WORLD, join=False, start_method="spawn")
        deadline = time.monotonic() + TIMEOUT
        try:
            while not ctx.join(timeout=max(deadline - time.monotonic(), 0.1)):
                if time.monotonic() > deadline:
                    raise TimeoutError(f"the ranks did not finish in {TIMEOUT} s")
            return
        except mp.ProcessRaisedException as e:
            if "address already in use" not in str(e).lower() or attempt == 2:
                raise
        finally:
            for p in ctx.processes:
                if p.is_alive():
                    p.kill()


def test_ddp_and_zero_match_one_process(tmp_path):
    run_two_ranks(tmp_path)
    model = make_model(DTYPE)
    x, y = make_data(DTYPE)
    opt = SGD(model.parameters(), **HYPER)
    for _ in range(STEPS):
        opt.zero_grad()
        mse(model, x, y).backward()
        opt.step()
    expected = flat_params(model)
    assert not torch.equal(expected, flat_params(make_model(DTYPE))), "nothing trained"
    for rank in range(WORLD):
        results = torch.load(tmp_path / f"rank{rank}.pt")
        assert_same(results["ddp"], expected, RTOL)
        assert_same(results["zero"], expected, RTOL)
