"""The manifest: each rank's rows, their parts in a checkpoint and the one file they make."""

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from raysift.manifest import DROPPED, MANIFEST, ShareManifest, merge_parts, write_run_dir
from raysift.run_state import RunState


def _two_ranks():
    """Rank 0 holds ids 5, 3, 8 (in that file order), rank 1 ids 1, 9; each rank hears of
    every addition and keeps its own rows."""
    ranks = [ShareManifest(np.array([5, 3, 8])), ShareManifest(np.array([1, 9]))]
    for m in ranks:
        m.add([3, 5], "initial", 0)
        m.add([8, 1], DROPPED, 0)
        m.add(np.array([9]), np.array(["hard"], dtype=object), 1)
    return ranks


def test_each_rank_keeps_its_own_rows_and_dropped_ones_leave_the_pool_untrained():
    first, second = _two_ranks()
    assert first.subset_rows().tolist() == [0, 1] and first.pool_rows().tolist() == []
    assert second.subset_rows().tolist() == [1] and second.pool_rows().tolist() == []
    assert first.add([1, 9, 42], "hard", 2) == 0  # none of them is rank 0's


def test_parts_merge_rank_by_rank_each_by_round_then_file_order(tmp_path):
    for rank, m in enumerate(_two_ranks()):
        m.write(tmp_path, rank)
    assert merge_parts(tmp_path, 2, tmp_path / MANIFEST) == 5
    assert pq.read_table(tmp_path / MANIFEST).to_pylist() == [
        {"id": 5, "round": 0, "reason": "initial"},
        {"id": 3, "round": 0, "reason": "initial"},
        {"id": 8, "round": 0, "reason": DROPPED},
        {"id": 1, "round": 0, "reason": DROPPED},
        {"id": 9, "round": 1, "reason": "hard"},
    ]


def test_a_restarted_rank_finds_its_rows_in_every_part(tmp_path):
    for rank, m in enumerate(_two_ranks()):
        m.write(tmp_path, rank)
    whole = ShareManifest(np.array([9, 8, 5, 3, 1, 7]))  # one rank now, and a row never taken
    whole.load(tmp_path)
    assert whole.round.tolist() == [1, 0, 0, 0, 0, -1]
    assert whole.subset_rows().tolist() == [0, 2, 3] and whole.pool_rows().tolist() == [5]
    assert [whole.reasons[c] for c in whole.code[:5]] == [
        "hard",
        DROPPED,
        "initial",
        "initial",
        DROPPED,
    ]


def test_the_run_directory_follows_a_checkpoint(tmp_path):
    checkpoint, run_dir = tmp_path / "checkpoint", tmp_path / "run"
    checkpoint.mkdir()
    for rank, m in enumerate(_two_ranks()):
        m.write(checkpoint, rank)
    RunState(next_round=2, manifest_rows=5).save(checkpoint)
    write_run_dir(checkpoint, run_dir, 2)
    assert RunState.load(run_dir).next_round == 2
    assert pq.read_table(run_dir / MANIFEST)["id"].to_pylist() == [5, 3, 8, 1, 9]


def test_a_tag_adds_columns_as_the_parts_stream_through(tmp_path):
    for rank, m in enumerate(_two_ranks()):
        m.write(tmp_path, rank)

    def tag(batch):
        return batch.append_column("odd", pa.array(batch.column("id").to_numpy() % 2 == 1))

    merge_parts(tmp_path, 2, tmp_path / MANIFEST, tag)
    merged = pq.read_table(tmp_path / MANIFEST)
    assert merged.column_names == ["id", "round", "reason", "odd"]
    assert merged["odd"].to_pylist() == [True, True, False, True, True]


def test_additions_past_one_block_are_all_entered():
    ids = np.arange(70_000) * 3  # more than one block of 65,536
    manifest = ShareManifest(ids)
    assert manifest.add(ids[::-1], "all", 0) == 70_000
    assert manifest.add(np.arange(70_000) * 3 + 1, "hard", 1) == 0  # none of them is here
    assert len(manifest.subset_rows()) == 70_000 and len(manifest.pool_rows()) == 0
