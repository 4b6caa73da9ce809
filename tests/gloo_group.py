"""Run a function in two processes joined by a gloo group: DDP arithmetic checked without Ray."""

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def run_gloo(worker, out_dir, world=2):
    """Call `worker(rank, out_dir)` in `world` processes; it saves what the test compares.

    The worker returns before the group is torn down, so its DDP wrapper (which holds the group)
    is freed first, and a barrier keeps a fast rank from closing pairs a slow rank still uses:
    either race aborts a gloo process now and then.
    """
    mp.spawn(_entry, args=(worker, world, str(out_dir)), nprocs=world, join=True)


def _entry(rank, worker, world, out_dir):
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"file://{out_dir}/rendezvous", rank=rank, world_size=world
    )
    try:
        worker(rank, out_dir)
        dist.barrier()
    finally:
        dist.destroy_process_group()
