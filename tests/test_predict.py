"""The scorer's numbers, by hand and through the Ray Data actor pool."""

import numpy as np
import torch

from raysift.operators.contract import ID, LABEL, X, from_columns
from raysift.operators.predict import score, score_logits


class AlwaysZero(torch.nn.Module):
    """Predicts class 0 with probability ~1, whatever the input."""

    def forward(self, x):
        logits = torch.zeros(len(x), 3)
        logits[:, 0] = 20.0
        return logits


def always_zero():
    return AlwaysZero()


def _pool(n=60):
    ids = np.arange(n, dtype=np.int64)
    return from_columns(
        {ID: ids, LABEL: ids % 3, X: np.zeros((n, 1, 4), np.float32)}, rows_per_block=20
    )


def test_score_logits_by_hand():
    logits = torch.log(torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.6, 0.3]]))
    out = score_logits(logits, torch.tensor([0, 2]))
    assert out["correct"].tolist() == [True, False]
    assert out["pred"].tolist() == [0, 1]
    np.testing.assert_allclose(out["margin"].numpy(), [0.7 - 0.2, 0.3 - 0.6], atol=1e-6)
    np.testing.assert_allclose(out["loss"].numpy(), [-np.log(0.7), -np.log(0.3)], atol=1e-6)


def test_the_actor_pool_scores_every_row_with_the_model(ray_session):
    # Labels run 0,1,2,0,1,2...; the model always says 0, so ids 1,2,4,5,7,8 ... are wrong.
    rows = {}
    for b in score(_pool(), always_zero, batch_size=10).iter_batches(batch_format="numpy"):
        for k, v in b.items():
            rows.setdefault(k, []).append(v)
    rows = {k: np.concatenate(v) for k, v in rows.items()}
    order = np.argsort(rows[ID])
    assert rows[ID][order].tolist() == list(range(60))
    assert rows["correct"][order].tolist() == [i % 3 == 0 for i in range(60)]
    assert (rows["pred"] == 0).all()
    assert set(rows) == {ID, LABEL, "loss", "correct", "margin", "pred"}


def test_without_labels_a_row_is_scored_against_its_prediction():
    logits = torch.log(torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.3, 0.6]]))
    out = score_logits(logits, None)
    assert "correct" not in out and out["pred"].tolist() == [0, 2]
    np.testing.assert_allclose(out["margin"].numpy(), [0.7 - 0.2, 0.6 - 0.3], atol=1e-6)
    np.testing.assert_allclose(out["loss"].numpy(), [-np.log(0.7), -np.log(0.6)], atol=1e-6)
