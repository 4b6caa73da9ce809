"""A cnn2d whose worker process dies once, at a given training forward on rank 1: a worker
killed mid-round, for Ray Train to restart. It dies only while `marker` does not exist, and
makes it first, so the restarted group (and any run given an existing marker) trains on."""

import os

import torch.distributed as dist

from raysift.training.models import Staged, cnn2d


class CrashOnce(Staged):
    def __init__(self, stages, marker: str, crash_at: int):
        super().__init__(list(stages))
        self.marker, self.crash_at, self.calls = marker, crash_at, 0

    def forward(self, x):
        if self.training and dist.is_initialized() and dist.get_rank() == 1:
            self.calls += 1
            if self.calls == self.crash_at and not os.path.exists(self.marker):
                open(self.marker, "w").close()
                os._exit(1)
        return super().forward(x)


def crash_once_cnn2d(input_shape, num_classes, marker: str, crash_at: int, **kwargs):
    return CrashOnce(cnn2d(input_shape, num_classes, **kwargs).stages, marker, crash_at)
