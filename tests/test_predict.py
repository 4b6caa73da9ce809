"""The scorer's numbers, M2's early stop, and the seeded pool order."""
import numpy as np
import torch

from operators.contract import ID, LABEL, X, from_columns
from operators.predict import collect_hard, score, score_logits, shuffled_pool


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
    return from_columns({ID: ids, LABEL: ids % 3,
                         X: np.zeros((n, 1, 4), np.float32)}, rows_per_block=20)


def test_score_logits_by_hand():
    logits = torch.log(torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.6, 0.3]]))
    out = score_logits(logits, torch.tensor([0, 2]))
    assert out["correct"].tolist() == [True, False]
    assert out["pred"].tolist() == [0, 1]
    np.testing.assert_allclose(out["margin"].numpy(), [0.7 - 0.2, 0.3 - 0.6], atol=1e-6)
    np.testing.assert_allclose(out["loss"].numpy(), [-np.log(0.7), -np.log(0.3)], atol=1e-6)


def test_early_stop_after_exactly_n_mispredictions(ray_session):
    # Labels run 0,1,2,0,1,2...; the model always says 0, so ids 1,2,4,5,7,8,10 ... are wrong.
    scored = score(_pool(), always_zero, batch_size=10)
    scan = collect_hard(scored, 5, batch_size=10)
    assert scan.hard_ids.tolist() == [1, 2, 4, 5, 7]
    assert scan.n_scored == 10  # the 5th miss is in the first batch: nothing more is read
    assert not scan.exhausted

    scan = collect_hard(score(_pool(), always_zero, batch_size=10), 7, batch_size=10)
    assert scan.hard_ids.tolist() == [1, 2, 4, 5, 7, 8, 10]
    assert scan.n_scored == 20


def test_scan_of_a_pool_with_too_few_misses_reads_it_all(ray_session):
    scan = collect_hard(score(_pool(), always_zero, batch_size=10), 100, batch_size=10)
    assert len(scan.hard_ids) == 40 and scan.n_scored == 60 and scan.exhausted


def test_shuffled_pool_is_seeded_and_excludes_the_subset(ray_session):
    exclude = np.array([3, 4, 50])

    def order(seed):
        return np.concatenate([b[ID] for b in shuffled_pool(_pool(), exclude, seed)
                               .iter_batches(batch_size=None, batch_format="numpy")])

    a, b, c = order(7), order(7), order(8)
    assert a.tolist() == b.tolist()
    assert sorted(a.tolist()) == sorted(set(range(60)) - {3, 4, 50})
    assert a.tolist() != c.tolist()
    assert a.tolist() != sorted(a.tolist())
