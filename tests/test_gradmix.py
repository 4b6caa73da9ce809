"""The mixing rules on hand-made vectors, the flat-gradient helpers, and the DDP path."""

import math

import pytest
import torch
import torch.nn.functional as F
from gloo_group import run_gloo

from raysift.transfer.gradmix import allreduce_mean, flat_grad, mix, set_flat_grad

R2 = math.sqrt(2.0)


def v(*xs):
    return torch.tensor(xs, dtype=torch.float64)


# (g_t, g_h) -> rule -> (expected g, w_t, w_h)
CASES = {
    "orthogonal": (
        (v(1, 0), v(0, 2)),
        0.0,
        {
            "similarity": (v(1, 2), 1.0, 1.0),
            "agem": (v(1, 0), 1.0, 0.0),
            "pcgrad": (v(1, 2), 1.0, 1.0),
            "sum": (v(1, 2), 1.0, 1.0),
        },
    ),
    "aligned": (
        (v(1, 0), v(3, 0)),
        1.0,
        {
            "similarity": (v(2, 0), 2.0, 0.0),
            "agem": (v(1, 0), 1.0, 0.0),
            "pcgrad": (v(4, 0), 1.0, 1.0),
            "sum": (v(4, 0), 1.0, 1.0),
        },
    ),
    # g_t . g_h = -1, |g_t|^2 = 1, |g_h|^2 = 2
    "conflicting": (
        (v(1, 0), v(-1, 1)),
        -1 / R2,
        {
            "similarity": (v(-R2, 1 + 1 / R2), 1 - 1 / R2, 1 + 1 / R2),
            "agem": (v(0.5, 0.5), 1.0, 0.5),
            "pcgrad": (v(0.5, 1.5), 2.0, 1.5),
            "sum": (v(0, 1), 1.0, 1.0),
        },
    ),
    "opposed": (
        (v(2, 0), v(-1, 0)),
        -1.0,
        {
            "similarity": (v(-2, 0), 0.0, 2.0),
            "agem": (v(0, 0), 1.0, 2.0),
            "pcgrad": (v(0, 0), 1.5, 3.0),
            "sum": (v(1, 0), 1.0, 1.0),
        },
    ),
}


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("rule", ["similarity", "agem", "pcgrad", "sum"])
def test_rules_on_hand_made_vectors(case, rule):
    (g_t, g_h), cos, expected = CASES[case]
    want, w_t, w_h = expected[rule]
    g, info = mix(g_t, g_h, rule)
    torch.testing.assert_close(g, want, atol=1e-12, rtol=0)
    assert info["cosine"] == pytest.approx(cos, abs=1e-12)
    assert info["w_t"] == pytest.approx(w_t, abs=1e-12)
    assert info["w_h"] == pytest.approx(w_h, abs=1e-12)
    assert info["conflict"] == (cos < 0)


def test_agem_result_never_conflicts_with_history():
    g, _ = mix(v(1, 0), v(-1, 1), "agem")
    assert float(g @ v(-1, 1)) == pytest.approx(0.0, abs=1e-12)


def test_similarity_floor_keeps_the_new_task_alive_when_opposed():
    g, info = mix(v(2, 0), v(-1, 0), "similarity", floor=0.25)
    assert (info["w_t"], info["w_h"]) == (0.25, 1.75)
    torch.testing.assert_close(g, v(0.5 - 1.75, 0))


@pytest.mark.parametrize(
    "cos, cos_scale, w_t, w_h",
    [
        (-0.05, 0.1, 0.5, 1.5),  # half-way to full conflict at scale 0.1
        (0.05, 0.1, 1.5, 0.5),  # ... and half-way to full agreement
        (-0.5, 0.1, 0.0, 2.0),  # beyond the scale: saturated
        (-0.05, 1.0, 0.95, 1.05),  # scale 1 is the plain rule 1 -+ cos
    ],
)
def test_similarity_cos_scale_makes_small_cosines_decide(cos, cos_scale, w_t, w_h):
    g_h = v(cos, math.sqrt(1 - cos * cos))  # a unit vector at that cosine with (1, 0)
    g, info = mix(v(1, 0), g_h, "similarity", cos_scale=cos_scale)
    assert (info["w_t"], info["w_h"]) == (pytest.approx(w_t), pytest.approx(w_h))
    torch.testing.assert_close(g, w_t * v(1, 0) + w_h * g_h)


def test_a_zero_gradient_has_cosine_zero_and_is_not_projected_on():
    g, info = mix(v(1, 2), v(0, 0), "pcgrad")
    assert info["cosine"] == 0.0 and not info["conflict"]
    torch.testing.assert_close(g, v(1, 2))


def test_bad_arguments_name_the_parameter():
    with pytest.raises(ValueError, match="rule"):
        mix(v(1), v(1), "mean")
    with pytest.raises(ValueError, match="floor"):
        mix(v(1), v(1), "agem", floor=0.1)
    with pytest.raises(ValueError, match="floor"):
        mix(v(1), v(1), "similarity", floor=1.5)
    with pytest.raises(ValueError, match="cos_scale"):
        mix(v(1), v(1), "similarity", cos_scale=0.0)
    with pytest.raises(ValueError, match="cos_scale"):
        mix(v(1), v(1), "pcgrad", cos_scale=0.5)
    with pytest.raises(ValueError, match="g_t, g_h"):
        mix(v(1, 2), v(1), "sum")


def test_flat_grad_round_trip_fills_missing_gradients_with_zeros():
    a = torch.nn.Parameter(torch.zeros(2, 2))
    b = torch.nn.Parameter(torch.zeros(3))
    a.grad = torch.arange(4.0).view(2, 2)
    torch.testing.assert_close(flat_grad([a, b]), torch.tensor([0.0, 1, 2, 3, 0, 0, 0]))
    set_flat_grad([a, b], torch.arange(7.0))
    torch.testing.assert_close(a.grad, torch.tensor([[0.0, 1], [2, 3]]))
    torch.testing.assert_close(b.grad, torch.tensor([4.0, 5, 6]))
    with pytest.raises(ValueError, match="vec"):
        set_flat_grad([a, b], torch.zeros(6))


def test_allreduce_mean_without_a_process_group_is_the_identity():
    x = torch.tensor([1.0, 2.0])
    assert allreduce_mean(x) is x


# --- DDP: two gloo workers, each with half of the global batches ---------------------------

RULES_DDP = ("similarity", "pcgrad", "agem")


def _data():
    g = torch.Generator().manual_seed(0)
    x_t = torch.randn(8, 3, generator=g)
    x_h = torch.randn(8, 3, generator=g)
    # The new task's labels invert the old one's: the two gradients conflict.
    y_h = (x_h[:, 0] > 0).long()
    y_t = (x_t[:, 0] <= 0).long()
    return x_t, y_t, x_h, y_h


def _model():
    torch.manual_seed(1)
    return torch.nn.Linear(3, 2)


def _grads(model, x_t, y_t, x_h, y_h, reduce):
    params = list(model.parameters())
    out = []
    for x, y in ((x_t, y_t), (x_h, y_h)):
        model.zero_grad()
        F.cross_entropy(model(x), y).backward()
        g = flat_grad(params)
        out.append(allreduce_mean(g) if reduce else g)
    return out


def _worker(rank, out_dir):
    x_t, y_t, x_h, y_h = _data()
    half = slice(rank * 4, rank * 4 + 4)
    model = _model()
    args = (x_t[half], y_t[half], x_h[half], y_h[half])
    g_t, g_h = _grads(model, *args, reduce=True)
    local_t, local_h = _grads(model, *args, reduce=False)
    result = {}
    for rule in RULES_DDP:
        result[rule] = mix(g_t, g_h, rule)[0]
        # The wrong order, for contrast: mix locally, then average the mixed updates.
        result["local_" + rule] = allreduce_mean(mix(local_t, local_h, rule)[0])
    set_flat_grad(list(model.parameters()), result["pcgrad"])
    torch.optim.SGD(model.parameters(), lr=0.1).step()
    result["weight"] = model.weight.detach().clone()
    torch.save(result, f"{out_dir}/rank{rank}.pt")


def test_ddp_update_equals_one_worker_on_the_global_batch(tmp_path):
    run_gloo(_worker, tmp_path)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]

    model = _model()
    g_t, g_h = _grads(model, *_data(), reduce=False)
    assert float(g_t @ g_h) < 0  # the rules differ from a plain sum on this data
    for rule in RULES_DDP:
        single = mix(g_t, g_h, rule)[0]
        for r in ranks:
            torch.testing.assert_close(r[rule], single, atol=1e-6, rtol=1e-5)
        # Averaging after mixing is not the global update: the test tells the orders apart.
        assert (ranks[0]["local_" + rule] - single).abs().max() > 1e-3
    set_flat_grad(list(model.parameters()), mix(g_t, g_h, "pcgrad")[0])
    torch.optim.SGD(model.parameters(), lr=0.1).step()
    for r in ranks:
        torch.testing.assert_close(r["weight"], model.weight.detach(), atol=1e-6, rtol=1e-5)
