"""The seeds' report from hand-made summaries: per-seed ratios against that seed's `full`,
mean ± std, bands; and `compare --seeds` laying out its runs (the runs faked, no training)."""

import json
import math

import pytest
from matplotlib.collections import PathCollection, PolyCollection
from test_report import _fake_run

from raysift import cli
from raysift.config import from_dict
from raysift.job import compare as compare_module
from raysift.report.seeds import (
    SEEDS_JSON,
    SEEDS_PNG,
    SEEDS_REPORT,
    aggregate,
    band,
    rebuild_seeds_report,
    seeds_figure,
    seeds_table,
    spread,
)


def _summary(strategy, seed, test, compute, wall, curve):
    """One round with a per-epoch curve of (train passes, val accuracy, clock); no val passes,
    so a point's compute is its train passes."""
    rec = {
        "round": 0,
        "phase": "round",
        "subset_size": 0,
        "val_accuracy": curve[-1][1],
        "hard_found": 0,
        "added": 0,
        "train_sample_passes": compute,
        "infer_sample_passes": 0,
        "curve": [
            {
                "epoch": e,
                "train_sample_passes": t,
                "val_sample_passes": 0,
                "val_accuracy": a,
                "val_balanced_accuracy": a - 0.1,
                "seconds_at": c,
            }
            for e, (t, a, c) in enumerate(curve)
        ],
    }
    return {
        "strategy": strategy,
        "seed": seed,
        "rounds": 1,
        "subset_size": 0,
        "test_accuracy": test,
        "test_balanced_accuracy": test - 0.1,
        "val_accuracy": curve[-1][1],
        "val_balanced_accuracy": curve[-1][1] - 0.1,
        "train_sample_passes": compute,
        "infer_sample_passes": 0,
        "compute": compute,
        "wall_seconds": {"total": wall},
        "per_round": [rec],
        "stop_reason": "done",
    }


# seed: full's and m2's (test, compute, wall, curve); m2 comes within 0.5 points of full's
# final validation on seeds 0 (at 30 of 100, 20 s of 50) and 1 (50 of 200, 30 s of 100), never
# on seed 2.
RUNS = {
    0: (
        (0.90, 100, 50, [(50, 0.85, 25), (100, 0.92, 50)]),
        (0.89, 30, 20, [(10, 0.90, 8), (30, 0.915, 20)]),
    ),
    1: (
        (0.80, 200, 100, [(100, 0.70, 50), (200, 0.80, 100)]),
        (0.80, 50, 30, [(25, 0.79, 15), (50, 0.80, 30)]),
    ),
    2: (
        (0.70, 100, 40, [(50, 0.60, 20), (100, 0.72, 40)]),
        (0.68, 40, 20, [(20, 0.60, 10), (40, 0.70, 20)]),
    ),
}
SUMMARIES = [
    _summary(name, seed, *run)
    for seed, runs in RUNS.items()
    for name, run in zip(("full", "m2"), runs)
]


def test_spread_is_the_mean_and_sample_std_of_the_values_present():
    s = spread([1.0, 2.0, None, 3.0])
    assert (s.mean, s.std, s.n, s.of) == (2.0, 1.0, 3, 4)
    assert s.format(2) == "2.00 ± 1.00 (3/4)"
    assert spread([0.5]).format(3) == "0.500 ± 0.000"
    assert spread([None, None]).format(2) == "-"


def test_ratios_are_taken_against_the_same_seeds_full_then_averaged():
    agg = aggregate(SUMMARIES)
    m2 = agg["m2"].spreads
    assert m2["compute_ratio"].mean == pytest.approx((0.3 + 0.25 + 0.4) / 3)
    assert m2["compute_ratio"].std == pytest.approx(
        math.sqrt(sum((r - 0.95 / 3) ** 2 for r in (0.3, 0.25, 0.4)) / 2)
    )
    assert (m2["wall_ratio"].mean, m2["wall_ratio"].std) == pytest.approx((0.4, 0.1))
    assert (m2["points_vs_full"].mean, m2["points_vs_full"].std) == pytest.approx((-1.0, 1.0))
    assert agg["m2"].worst_points == pytest.approx(-2.0)
    assert (m2["reach"].mean, m2["reach"].n) == (pytest.approx(0.275), 2)
    assert m2["reach"].std == pytest.approx(0.05 / math.sqrt(2))
    assert (m2["reach_wall"].mean, m2["reach_wall"].n) == (pytest.approx(0.35), 2)
    assert m2["test_accuracy"].mean == pytest.approx((0.89 + 0.80 + 0.68) / 3)
    full = agg["full"].spreads
    assert (full["compute_ratio"].mean, full["compute_ratio"].std) == (1.0, 0.0)
    assert agg["full"].seeds == [0, 1, 2]


def test_the_table_has_a_row_per_strategy_with_mean_and_std():
    head, rows = seeds_table(SUMMARIES)
    cells = dict(zip(head, rows[1]))
    assert cells["strategy"] == "m2" and cells["seeds"] == "0,1,2"
    assert cells["points vs full"] == "-1.00 ± 1.00"
    assert cells["wall vs full"] == "0.40 ± 0.10"
    assert cells["reach"] == "0.275 ± 0.035 (2/3)"
    assert cells["worst seed vs full"] == "-2.00"


def test_without_full_the_ratios_are_left_blank():
    head, rows = seeds_table([s for s in SUMMARIES if s["strategy"] == "m2"])
    cells = dict(zip(head, rows[0]))
    assert cells["compute vs full"] == "-" and cells["worst seed vs full"] == "-"


def test_a_band_is_the_mean_and_std_on_the_span_every_seed_covers():
    x, mean, std = band([[(0, 0.0), (10, 1.0)], [(2, 1.0), (8, 1.0)]])
    assert (x[0], x[-1]) == (2, 8)
    assert mean[0] == pytest.approx(0.6) and mean[-1] == pytest.approx(0.9)
    assert std[0] == pytest.approx(0.8 / math.sqrt(2))
    assert band([[(0, 0.5), (1, 0.6)], [(2, 0.5), (3, 0.6)]]) is None  # no common span
    assert band([[(0, 0.5)], []]) is None


def test_the_figure_has_a_mean_line_and_a_band_per_strategy():
    acc, bal, acc_wall, _ = seeds_figure(SUMMARIES).axes
    assert [line.get_label() for line in acc.get_lines()] == ["full", "m2"]
    m2 = acc.get_lines()[1]
    assert (m2.get_xdata()[0], m2.get_xdata()[-1]) == (25, 30)  # what every m2 seed covers
    assert sum(isinstance(c, PolyCollection) for c in acc.collections) == 2  # the bands
    stars = [tuple(c.get_offsets()[0]) for c in acc.collections if isinstance(c, PathCollection)]
    assert stars[1] == pytest.approx((40, (0.89 + 0.80 + 0.68) / 3))
    # full's clocks (25-50, 50-100, 20-40 s) share no span: each seed drawn thin instead
    assert [line.get_label() for line in acc_wall.get_lines()] == [
        "full",
        "_nolegend_",
        "_nolegend_",
        "m2",
    ]


def test_report_rebuilds_from_seeds_json(tmp_path, capsys):
    (tmp_path / SEEDS_JSON).write_text(json.dumps(SUMMARIES))
    assert cli.main(["report", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "0.275 ± 0.035 (2/3)" in out
    assert (tmp_path / SEEDS_PNG).exists()
    assert "| m2 | 0,1,2 |" in (tmp_path / SEEDS_REPORT).read_text()
    (tmp_path / SEEDS_JSON).write_text(json.dumps([{"strategy": "m2"}]))
    with pytest.raises(Exception, match="with a seed each"):
        rebuild_seeds_report(tmp_path)


def test_seeds_given_twice_are_refused(capsys):
    assert cli.main(["compare", "configs/demo_mnist1d.yaml", "--seeds", "0,0"]) == 2
    assert "--seeds '0,0': a seed is given twice" in capsys.readouterr().err


def test_compare_over_seeds_runs_each_strategy_per_seed_in_its_own_folder(tmp_path, monkeypatch):
    ran = []

    def fake_run_job(job, **_):
        ran.append((job.seed, job.strategy.name, job.run_dir))
        _fake_run(tmp_path / job.run_dir, job.strategy.name)
        return next(
            s for s in SUMMARIES if s["seed"] == job.seed and s["strategy"] == job.strategy.name
        )

    monkeypatch.setattr(compare_module, "run_job", fake_run_job)
    monkeypatch.setattr(compare_module, "init_ray", lambda: ran.append("ray"))
    monkeypatch.chdir(tmp_path)
    job = from_dict({"seed": 9, "run_dir": "cmp"})
    got = compare_module.compare(job, ["full", "m2"], seeds=[0, 2], echo=lambda *_: None)
    # Ray starts once, before the first strategy's clock, not inside the first run.
    assert ran == [
        "ray",
        (0, "full", "cmp/seed0/full"),
        (0, "m2", "cmp/seed0/m2"),
        (2, "full", "cmp/seed2/full"),
        (2, "m2", "cmp/seed2/m2"),
    ]
    assert [(s["seed"], s["strategy"]) for s in got] == [
        (0, "full"),
        (0, "m2"),
        (2, "full"),
        (2, "m2"),
    ]
    assert json.loads((tmp_path / "cmp" / SEEDS_JSON).read_text()) == got
    assert (tmp_path / "cmp" / "seed0" / "comparison.md").exists()
    assert "seeds 0, 2" in (tmp_path / "cmp" / SEEDS_REPORT).read_text()
