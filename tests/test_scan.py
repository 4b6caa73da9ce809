"""The pool scan's global early stop, in two gloo processes with mistakes known ahead."""

import json

import numpy as np
from gloo_group import run_gloo

from raysift.operators.contract import ID, LABEL
from raysift.selection.scan import scan_pool

# Each rank's pool in scan order (ids) and which of them the stub model gets wrong.
POOLS = {0: np.arange(0, 10), 1: np.arange(100, 107)}
WRONG = {1, 3, 4, 8, 101, 102, 106}
BATCH = 3


def stub_scores(rank):
    def score_rows(rows):  # positions into the rank's pool
        ids = POOLS[rank][rows]
        return {
            ID: ids,
            LABEL: np.zeros(len(ids), np.int64),
            "correct": np.array([i not in WRONG for i in ids]),
        }

    return score_rows


def _scan_worker(rank, out_dir):
    found = []
    for n_hard in (3, 4, 0, 50):
        scan = scan_pool(
            stub_scores(rank),
            np.arange(len(POOLS[rank])),
            n_hard,
            BATCH,
            progress=lambda seen, hard, n=n_hard: found.append((n, seen, hard)),
        )
        found.append(
            {
                "n_hard": n_hard,
                "hard": scan.hard_ids.tolist(),
                "scored": scan.scored[ID].tolist(),
                "n_scored": scan.n_scored,
                "exhausted": scan.exhausted,
            }
        )
    with open(f"{out_dir}/rank{rank}.json", "w") as f:
        json.dump(found, f)


def test_the_ranks_stop_together_once_the_mispredictions_are_found(tmp_path):
    run_gloo(_scan_worker, tmp_path)
    got = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    results = [{g["n_hard"]: g for g in rank if isinstance(g, dict)} for rank in got]
    for n in (3, 4, 0, 50):  # every rank ends with the same hard rows and count
        assert results[0][n]["hard"] == results[1][n]["hard"]
        assert results[0][n]["n_scored"] == results[1][n]["n_scored"]
    # Step 0 scores ids 0-2 and 100-102: misses 1, 101, 102 (3 found). n_hard = 3 stops there.
    for r in (0, 1):
        three = results[r][3]
        assert three["hard"] == [1, 101, 102] and three["n_scored"] == 6
        assert not three["exhausted"]
    assert results[0][3]["scored"] == [0, 1, 2] and results[1][3]["scored"] == [100, 101, 102]
    # n_hard = 4: step 1 (ids 3-5, 103-105) adds 3 and 4; the first four in scan order (step,
    # then rank, then position) are 1, 101, 102, 3. Twelve rows scored, the rest never.
    four = results[0][4]
    assert four["hard"] == [1, 101, 102, 3] and four["n_scored"] == 12
    assert results[1][4]["scored"] == [100, 101, 102, 103, 104, 105]
    # n_hard = 0 scores everything; so does a target the pools cannot meet. Rank 1 runs out
    # after step 2 (id 106) but keeps stepping with rank 0, which needs a fourth (id 9).
    for n in (0, 50):
        assert results[0][n]["hard"] == [1, 101, 102, 3, 4, 8, 106] and results[0][n]["exhausted"]
        assert results[0][n]["n_scored"] == 17 and results[1][n]["n_scored"] == 17
    # The progress both ranks saw: rows and misses over the group after every step.
    steps = [
        (seen, hard) for g in got[0] if not isinstance(g, dict) for n, seen, hard in [g] if n == 0
    ]
    assert steps == [(6, 3), (12, 5), (16, 7), (17, 7)]
