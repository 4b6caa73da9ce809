"""Mix the transfer gradient with the history gradient (M5 step 4).

Gradients are handled as one flat vector over a model's parameters: `flat_grad` reads `.grad`,
`set_flat_grad` writes the mixed vector back so the optimiser applies it. Every rule returns
`g = w_t * g_t + w_h * g_h` and reports `w_t`, `w_h` and the cosine, so a run can log how much
each task steered each step.

Under DDP the two gradients must be averaged across workers *separately and before mixing*: the
rules are not linear in the gradients, so mixing each worker's local gradients and averaging the
results would not be the update of the global batch. Use an unwrapped model (DDP's hook would
reduce only what `.backward()` accumulates) and `allreduce_mean` each vector; every worker then
mixes the same two vectors and applies the same update.

A step of the transfer loop:

    opt.zero_grad(); loss_t.backward(); g_t = allreduce_mean(flat_grad(params))
    opt.zero_grad(); loss_h.backward(); g_h = allreduce_mean(flat_grad(params))
    g, info = mix(g_t, g_h, rule); set_flat_grad(params, g); opt.step()
"""

from __future__ import annotations

from typing import Iterable

import torch
import torch.distributed as dist

from raysift.training.collective import grouped
from raysift.transfer.config import MIX_RULES, require_rule


def flat_grad(params: Iterable[torch.nn.Parameter]) -> torch.Tensor:
    """The parameters' `.grad` as one vector; a parameter without a gradient contributes zeros."""
    parts = [
        p.grad.reshape(-1) if p.grad is not None else torch.zeros_like(p).reshape(-1)
        for p in params
    ]
    if not parts:
        raise ValueError("params: no parameters to take gradients from")
    return torch.cat(parts)


def set_flat_grad(params: Iterable[torch.nn.Parameter], vec: torch.Tensor) -> None:
    """Write `vec` into the parameters' `.grad`, in the order `flat_grad` reads them."""
    params = list(params)
    total = sum(p.numel() for p in params)
    if vec.dim() != 1 or vec.numel() != total:
        raise ValueError(
            f"vec: expected a vector of {total} values (the parameters' size), "
            f"got shape {tuple(vec.shape)}"
        )
    offset = 0
    for p in params:
        chunk = vec[offset : offset + p.numel()].view_as(p).to(p.dtype)
        if p.grad is None:
            p.grad = chunk.clone()
        else:
            p.grad.copy_(chunk)
        offset += p.numel()


def allreduce_mean(vec: torch.Tensor) -> torch.Tensor:
    """The mean of `vec` over all workers when torch.distributed is initialised, else `vec`."""
    if not grouped():
        return vec
    out = vec.clone()
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out / dist.get_world_size()


def _weights_similarity(
    cos: float, floor: float = 0.0, cos_scale: float = 1.0
) -> tuple[float, float]:
    """w_h = 1 - c, w_t = 1 + c with c = clip(cos / cos_scale, -1, 1), each kept >= `floor`.

    Why: the history weight grows as the two gradients conflict, so the old task is protected
    exactly when the new task would pull the model away from it; when they agree, the transfer
    gradient already serves both and takes the step. The weights sum to 2, the total weight of
    plain replay, so the rules compare at the same step size; at cos = 0 the rule *is* plain
    replay. `floor > 0` keeps either task from being switched off entirely.

    `cos_scale` (in (0, 1]) is the cosine that counts as full conflict or full agreement:
    two minibatch gradients of a network with thousands of weights are nearly orthogonal
    (|cos| about 0.1), where 1 +- cos stays within a few percent of plain replay; with
    cos_scale 0.1 a cosine of -0.05 already gives the history 1.5 and the new scene 0.5.
    cos_scale 1 is the rule above unchanged.
    """
    c = min(max(cos / cos_scale, -1.0), 1.0)
    w_h = min(max(1.0 - c, floor), 2.0 - floor)
    return 2.0 - w_h, w_h


def mix(
    g_t: torch.Tensor, g_h: torch.Tensor, rule: str = "similarity", **opts
) -> tuple[torch.Tensor, dict]:
    """The mixed gradient `w_t g_t + w_h g_h` under `rule`, and info {cosine, w_t, w_h, conflict}.

    similarity: weights from the cosine (see `_weights_similarity`); options `floor` (0 to 1)
            and `cos_scale` (in (0, 1], default 1).
    agem:   when g_t . g_h < 0, g_t minus its component along g_h (A-GEM); else g_t.
    pcgrad: when g_t . g_h < 0, each projected onto the other's normal plane, then summed;
            else g_t + g_h (PCGrad for two tasks).
    sum:    g_t + g_h, plain replay (the control).
    A zero gradient has cosine 0 with anything and is never projected on.
    """
    require_rule(rule, MIX_RULES)
    allowed = {"floor", "cos_scale"} if rule == "similarity" else set()
    unknown = sorted(set(opts) - allowed)
    if unknown:
        raise ValueError(
            f"rule {rule!r}: unknown option(s) {unknown}; accepted: {sorted(allowed) or 'none'}"
        )
    if g_t.shape != g_h.shape or g_t.dim() != 1:
        raise ValueError(
            f"g_t, g_h: expected two vectors of the same length, got shapes "
            f"{tuple(g_t.shape)} and {tuple(g_h.shape)}"
        )
    floor = float(opts.get("floor", 0.0))
    if not 0.0 <= floor <= 1.0:
        raise ValueError(f"floor: must be in [0, 1], got {floor}")
    cos_scale = float(opts.get("cos_scale", 1.0))
    if not 0.0 < cos_scale <= 1.0:
        raise ValueError(f"cos_scale: must be in (0, 1], got {cos_scale}")

    g_t64, g_h64 = g_t.double(), g_h.double()
    dot = float(g_t64 @ g_h64)
    nt2, nh2 = float(g_t64 @ g_t64), float(g_h64 @ g_h64)
    cos = dot / (nt2 * nh2) ** 0.5 if nt2 > 0 and nh2 > 0 else 0.0
    conflict = dot < 0  # implies both norms are non-zero

    if rule == "similarity":
        w_t, w_h = _weights_similarity(cos, floor, cos_scale)
    elif rule == "agem":
        w_t, w_h = 1.0, (-dot / nh2 if conflict else 0.0)
    elif rule == "pcgrad":
        w_t, w_h = (1.0 - dot / nt2, 1.0 - dot / nh2) if conflict else (1.0, 1.0)
    else:
        w_t, w_h = 1.0, 1.0
    g = (w_t * g_t64 + w_h * g_h64).to(g_t.dtype)
    return g, {"cosine": cos, "w_t": w_t, "w_h": w_h, "conflict": conflict}
