"""The run state survives a save and a load; seeds; a run directory replaced all or nothing."""

import pytest

from raysift.run_state import RunState, replace_via_staging
from raysift.seeding import derive_seed


def test_save_load_roundtrip(tmp_path):
    state = RunState(records=[{"round": 0, "val_accuracy": 0.5}], manifest_rows=3)
    state.next_round, state.test = 1, {"test_accuracy": 0.75}
    state.save(tmp_path)
    assert RunState.load(tmp_path) == state
    assert RunState.load(tmp_path / "nothing") is None


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
