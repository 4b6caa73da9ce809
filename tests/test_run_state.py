"""The run state survives a save/load and a half-finished save."""

import numpy as np
import pytest

from raysift.run_state import DROPPED, MANIFEST, RunState, replace_via_staging
from raysift.seeding import derive_seed


def test_save_load_roundtrip(tmp_path):
    state = RunState()
    state.add([5, 3], "initial", 0)
    state.add(np.array([9]), np.array(["hard"], dtype=object), 1)
    state.records.append({"round": 0, "val_accuracy": 0.5})
    state.next_round, state.test = 1, {"test_accuracy": 0.75}
    state.save(tmp_path)
    back = RunState.load(tmp_path)
    assert back.ids.tolist() == [5, 3, 9] and back.rounds_added.tolist() == [0, 0, 1]
    assert back.reasons.tolist() == ["initial", "initial", "hard"]
    assert (
        back.records == state.records
        and back.test == {"test_accuracy": 0.75}
        and back.next_round == 1
    )


def test_dropped_rows_stay_in_the_manifest_but_out_of_the_subset(tmp_path):
    state = RunState()
    state.add([5, 3], "initial", 0)
    state.add([8, 1], DROPPED, 0)
    state.add([9], "balanced", 1)
    state.save(tmp_path)
    back = RunState.load(tmp_path)
    assert back.subset_ids().tolist() == [5, 3, 9]
    assert back.manifest_ids().tolist() == [5, 3, 8, 1, 9]
    assert back.reasons.tolist() == ["initial", "initial", "dropped", "dropped", "balanced"]
    assert back.rounds_added.tolist() == [0, 0, 0, 0, 1]


def test_manifest_rows_past_the_state_are_ignored(tmp_path):
    state = RunState()
    state.add([1, 2], "initial", 0)
    state.save(tmp_path)
    # A later save that died between the manifest write and the state write:
    ahead = RunState(ids=[1, 2, 7], rounds_added=[0, 0, 1], reasons=["initial"] * 2 + ["hard"])
    ahead.save(tmp_path / "later")
    (tmp_path / MANIFEST).write_bytes((tmp_path / "later" / MANIFEST).read_bytes())
    assert RunState.load(tmp_path).ids.tolist() == [1, 2]


def test_derived_seeds_are_stable_and_distinct():
    assert derive_seed(0, "pool", 1) == derive_seed(0, "pool", 1)
    assert len({derive_seed(0, "pool", r) for r in range(50)}) == 50
    assert derive_seed(0, "pool", 1) != derive_seed(1, "pool", 1)
    assert derive_seed(3, "x") == 6845345792451409772  # fixed across Python processes


def test_replace_via_staging_keeps_the_old_run_when_filling_fails(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "old.txt").write_text("old")

    def bad(staging):
        (staging / "half.txt").write_text("half")
        raise ValueError("bad input")

    with pytest.raises(ValueError, match="bad input"):
        replace_via_staging(run, bad)
    assert [p.name for p in tmp_path.iterdir()] == ["run"]
    assert (run / "old.txt").read_text() == "old"

    assert replace_via_staging(run, lambda s: (s / "new.txt").write_text("new")) == 3
    assert sorted(p.name for p in run.iterdir()) == ["new.txt"]


def test_the_run_clock_runs_on_through_a_worker_restart_and_skips_the_time_no_driver_ran():
    from raysift.job.engine import run_clock_origin

    assert run_clock_origin(RunState(), 1000.0) == 1000.0  # a new run counts from its start
    # Saved at 100 + 50 = 150 s, after this session began at 120: a restarted worker group
    # keeps the clock, the time lost to the failure included.
    assert run_clock_origin(RunState(seconds=50.0, clock_origin=100.0), 120.0) == 100.0
    # Saved before this session began at 1000: resumed, 50 s in already.
    assert run_clock_origin(RunState(seconds=50.0, clock_origin=100.0), 1000.0) == 950.0
