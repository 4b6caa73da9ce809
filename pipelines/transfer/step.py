"""One transfer step and the epoch walk (M5 steps 3-4), in plain torch.

The Ray Train loop (`transfer._transfer_loop`) and the in-process benchmark run the same code:
`run_epochs` on one process (world 1) or on each of `world` workers.

DDP without DDP's wrapper (see `gradmix`): every worker holds the whole model and its rows of
each *global* batch. A worker's loss is its rows' summed cross-entropy times world / (rows of
the global batch), so `allreduce_mean` of the gradients is exactly the gradient of the global
batch's mean loss, also when the last batch does not split evenly. Both gradients are reduced
before they are mixed, so every worker mixes the same two vectors and takes the same step; the
floating buffers (BatchNorm's running statistics) are averaged after each step, so the workers'
models stay equal.

What is trained is a `Task`: a batch's summed loss (cross-entropy for a classifier,
`detector.detection_loss` for the detector) and the distillation term. With
`train.distill > 0` the history batch's loss gets `distill` times the distillation of the
meta-model's outputs (LwF-style, on the history samples only: on the new ones it would pull
against the new labels). The teacher is the model as `run_epochs` received it (the
meta-model), run in the student's mode: with BatchNorm both then normalise by the same batch's
statistics, so the term is exactly zero while the two are equal.
"""

from __future__ import annotations

import copy
from typing import Callable, Iterator, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

from raysift.operators.contract import LABEL, X
from raysift.seeding import derive_seed
from raysift.training.collective import rank_and_world
from raysift.transfer.config import RULES, TransferTrainConfig, require_rule
from raysift.transfer.gradmix import allreduce_mean, flat_grad, mix, set_flat_grad
from raysift.transfer.history import TARGET, HistoryLibrary

DISTILL_TEMPERATURE = 2.0  # LwF's


class Batch(NamedTuple):
    x: torch.Tensor  # this worker's rows
    y: torch.Tensor  # their targets: labels, or a detector's dense targets
    rows: int  # rows of the global batch, over all workers


class Task(NamedTuple):
    """What a transfer trains; both functions sum over the batch's rows."""

    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (outputs, targets)
    distillation: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (student, teacher)


def cross_entropy_sum(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits, labels, reduction="sum")


def softmax_distillation(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """T^2 KL(softmax(teacher / T) || softmax(student / T)), summed over rows (Hinton, LwF)."""
    t = DISTILL_TEMPERATURE
    return (
        t
        * t
        * F.kl_div(
            F.log_softmax(student / t, 1),
            F.log_softmax(teacher / t, 1),
            reduction="sum",
            log_target=True,
        )
    )


CLASSIFIER = Task(cross_entropy_sum, softmax_distillation)


def _world() -> int:
    return rank_and_world()[1]


def step_gradients(
    model: torch.nn.Module,
    params: list,
    new: Batch,
    history: Batch | None,
    task: Task = CLASSIFIER,
    teacher: torch.nn.Module | None = None,
    distill: float = 0.0,
    joint: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """g_t and g_h (None without a history batch), the same on every worker: each the
    gradient of its global batch's mean loss, g_h's with `distill` times the distillation
    against `teacher`.

    Apart (the default), each batch has its own forward pass, so BatchNorm normalises the new
    rows by their own statistics and the history rows by theirs, while its running statistics
    (what evaluation uses) average the two. `joint` takes one forward pass over both batches
    and two backward passes: training then normalises by the mixture, as evaluation will.
    """
    batches = [new] if history is None else [new, history]
    weights = [0.0, distill]
    if joint:
        x = torch.cat([b.x for b in batches])
        rows = [len(b.y) for b in batches]
        outs = model(x).split(rows)
        taught = _teach(teacher, model, x).split(rows) if distill else None
    grads = []
    for i, batch in enumerate(batches):
        model.zero_grad(set_to_none=True)
        if len(batch.y):  # a worker without rows in a short last batch contributes zeros
            out = outs[i] if joint else model(batch.x)
            loss = task.loss(out, batch.y)
            if weights[i]:
                teach = taught[i] if joint else _teach(teacher, model, batch.x)
                loss = loss + weights[i] * task.distillation(out, teach)
            (loss * (_world() / batch.rows)).backward(retain_graph=joint and i == 0)
        grads.append(allreduce_mean(flat_grad(params)))
    return grads[0], grads[1] if history is not None else None


def _teach(teacher: torch.nn.Module, model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The teacher's outputs, in the student's mode (the same batch statistics)."""
    teacher.train(model.training)
    with torch.no_grad():
        return teacher(x)


def sync_buffers(model: torch.nn.Module) -> None:
    """Average the floating buffers over the workers (one all-reduce), so the models agree."""
    buffers = [b for b in model.buffers() if b.is_floating_point()]
    if not buffers or _world() == 1:
        return
    mean = allreduce_mean(torch.cat([b.reshape(-1) for b in buffers]))
    offset = 0
    for b in buffers:
        b.copy_(mean[offset : offset + b.numel()].view_as(b))
        offset += b.numel()


def transfer_step(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    new: Batch,
    history: Batch | None,
    train: TransferTrainConfig,
    task: Task = CLASSIFIER,
    teacher: torch.nn.Module | None = None,
) -> dict:
    """One update: g_t from `new`, g_h from `history` (with `train.distill` times the
    distillation against `teacher`), mixed by `train.rule`, applied by `optimizer`.

    `finetune` takes g_t alone (no history batch); the other rules are `gradmix.mix`'s, the
    similarity rule with `train.floor` and `train.cos_scale`; `train.joint_forward` is
    `step_gradients`'s `joint`. Returns mix's info ({} for finetune).
    """
    rule = train.rule
    require_rule(rule, RULES)
    if rule != "finetune" and history is None:
        raise ValueError(f"history: rule {rule!r} needs a history batch")
    if train.distill and teacher is None:
        raise ValueError("teacher: distill > 0 needs the meta-model as the teacher")
    params = [p for p in model.parameters() if p.requires_grad]
    model.train()
    g, g_h = step_gradients(
        model,
        params,
        new,
        None if rule == "finetune" else history,
        task,
        teacher,
        train.distill,
        train.joint_forward,
    )
    info = {}
    if g_h is not None:
        options = {"floor": train.floor, "cos_scale": train.cos_scale}
        g, info = mix(g, g_h, rule, **(options if rule == "similarity" else {}))
    set_flat_grad(params, g)
    optimizer.step()
    sync_buffers(model)
    return info


def epoch_walk(
    n_new: int,
    batch_size: int,
    seed: int,
    epoch: int,
    history: Iterator[dict] | None = None,
    rank: int = 0,
    world: int = 1,
) -> Iterator[tuple[np.ndarray, int, dict | None]]:
    """One epoch over the new samples, in step with the history (M5 step 3).

    Yields, per global batch of a seeded permutation of the `n_new` rows: this rank's rows
    (rank, rank + world, ...), the global batch's size, and the next history batch (None
    without a history). Every new row is used once; the epoch ends when they are used up.
    """
    if n_new < 1:
        raise ValueError(f"n_new: there are no new samples to walk (got {n_new})")
    if batch_size < 1:
        raise ValueError(f"batch_size: must be >= 1, got {batch_size}")
    if not 0 <= rank < world:
        raise ValueError(f"rank: must be in [0, {world}), got {rank}")
    order = np.random.default_rng(derive_seed(seed, "new", epoch)).permutation(n_new)
    for start in range(0, n_new, batch_size):
        rows = order[start : start + batch_size]
        yield rows[rank::world], len(rows), None if history is None else next(history)


def run_epochs(
    model: torch.nn.Module,
    x_new: np.ndarray,
    y_new: np.ndarray,
    library: HistoryLibrary | None,
    train: TransferTrainConfig,
    history_batch_size: int,
    seed: int,
    task: Task = CLASSIFIER,
) -> dict:
    """Transfer `model` in place for `train.epochs` epochs (SGD); returns the step statistics.

    `y_new` are labels for the classifier task, dense targets for the detector's; the
    library's batches give their `target` column when they have one, else their labels.
    Under torch.distributed every worker passes the same `x_new`, `y_new` and library and
    takes its rank's share of each batch; the counts and mixing statistics returned are
    global, the same on every worker. Without a process group it is one worker (world 1).
    """
    rank, world = rank_and_world()
    device = next(model.parameters()).device
    x_all = torch.as_tensor(x_new, dtype=torch.float32, device=device)
    y_all = torch.as_tensor(y_new, device=device)
    teacher = copy.deepcopy(model) if train.distill else None
    start = copy.deepcopy(model.state_dict()) if train.interpolate < 1 else None
    optimizer = torch.optim.SGD(
        [p for p in model.parameters() if p.requires_grad],
        lr=train.lr,
        momentum=train.momentum,
        weight_decay=train.weight_decay,
    )
    history = None
    if train.rule != "finetune":
        if library is None:
            raise ValueError(f"library: rule {train.rule!r} replays a history library")
        history = library.iter_batches(
            history_batch_size, derive_seed(seed, "history"), rank, world
        )
    steps = new_passes = history_passes = conflicts = 0
    sums = {"cosine": 0.0, "w_t": 0.0, "w_h": 0.0}
    for epoch in range(train.epochs):
        for rows, n, hist in epoch_walk(
            len(y_all), train.batch_size, seed, epoch, history, rank, world
        ):
            idx = torch.from_numpy(rows).to(device)
            h = (
                None
                if hist is None
                else Batch(
                    torch.from_numpy(hist[X]).to(device),
                    torch.from_numpy(hist.get(TARGET, hist[LABEL])).to(device),
                    history_batch_size,
                )
            )
            info = transfer_step(
                model, optimizer, Batch(x_all[idx], y_all[idx], n), h, train, task, teacher
            )
            steps, new_passes = steps + 1, new_passes + n
            if info:
                history_passes += history_batch_size
                conflicts += info["conflict"]
                for key in sums:
                    sums[key] += info[key]
    if start is not None:
        model.load_state_dict(interpolate(start, model.state_dict(), train.interpolate))
    mixed = history is not None
    return {
        "steps": steps,
        "new_sample_passes": new_passes,
        "history_sample_passes": history_passes,
        "mean_cosine": sums["cosine"] / steps if mixed else None,
        "mean_w_t": sums["w_t"] / steps if mixed else None,
        "mean_w_h": sums["w_h"] / steps if mixed else None,
        "conflict_steps": conflicts if mixed else None,
    }


def interpolate(start: dict, end: dict, alpha: float) -> dict:
    """WiSE-FT (Wortsman et al. 2022): the floating entries of two state dicts of one model as
    start + alpha * (end - start), BatchNorm's running statistics too; the others (its batch
    counter) as in `end`. Along the line from the meta-model to the transferred one the old
    scene's accuracy comes back and the new scene's gain goes; how fast each moves is what
    bench_transfer.py measures."""
    return {
        k: start[k] + alpha * (v - start[k]) if v.is_floating_point() else v for k, v in end.items()
    }
