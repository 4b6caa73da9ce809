"""The comparison report from hand-made summaries and tiny fake run dirs (no training)."""

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image
from ray.data.extensions import ArrowTensorArray

from raysift import cli
from raysift.manifest import MANIFEST
from raysift.operators.contract import DataError
from raysift.report.comparison import (
    ACCURACY_PNG,
    BALANCE_PNG,
    COMPARISON,
    REPORT,
    SECONDS,
    accuracy_figure,
    class_balance_figure,
    comparison_table,
    compute_to_reach,
    curve_points,
    equal_compute_table,
    rebuild_report,
    saving_sentence,
    subset_class_counts,
    table,
    value_at,
    write_report,
)
from raysift.run_state import atomic_write_json

# Training ids 0..11: ids 0-5 are class 0, 6-8 class 1, 9-11 class 2.
LABELS = {i: 0 if i < 6 else 1 if i < 9 else 2 for i in range(12)}

# strategy -> manifest rows (ids, reason, round)
MANIFESTS = {
    "full": [(range(12), "all", 0)],
    "m2": [([0, 6, 9], "initial", 0), ([1, 7], "hard", 1), ([10], "representative", 1)],
    "random": [([0, 6, 9], "initial", 0), ([2, 3], "random", 1)],
    "norm_balanced": [
        ([0, 1, 6, 9], "initial", 0),
        ([2, 3, 7], "dropped", 1),
        ([4, 10], "norm", 1),
        ([5], "dropped", 2),
    ],
    "infobatch": [(range(12), "all", 0)],
}
# Subset per class after each trained round (a final phase trains on the last one); dropped ids
# never count.
COUNTS = {
    "full": [[6, 3, 3]],
    "m2": [[1, 1, 1], [2, 2, 2]],
    "random": [[1, 1, 1], [3, 1, 1]],
    "norm_balanced": [[2, 1, 1], [3, 1, 2], [3, 1, 2]],
    "infobatch": [[6, 3, 3]],
}


def _round(r, train, infer, acc, bal=None, curve=None, phase="round", end=None):
    """A phase record; `curve` rows (train, val passes, acc, bal[, clock]), `end` its clock."""
    rec = {
        "round": r,
        "phase": phase,
        "subset_size": 0,
        "val_accuracy": acc,
        "hard_found": 0,
        "added": 0,
        "train_sample_passes": train,
        "infer_sample_passes": infer,
    }
    if bal is not None:
        rec["val_balanced_accuracy"] = bal
    if curve is not None:
        rec["curve"] = [
            {
                "epoch": e,
                "train_sample_passes": t,
                "val_sample_passes": v,
                "val_accuracy": a,
                "val_balanced_accuracy": b,
                **({"seconds_at": c[0]} if c else {}),
            }
            for e, (t, v, a, b, *c) in enumerate(curve)
        ]
    if end is not None:
        rec["seconds_end"] = end
    return rec


# Compute (train + infer / 3): full 400, m2 100, random 120, norm_balanced 200, infobatch 300.
PER_ROUND = {
    # One round with a per-epoch curve: 15 val passes per epoch.
    # Wall clock at each epoch's validation: 10, 20, 30 s.
    "full": [
        _round(
            0,
            385,
            45,
            0.93,
            0.91,
            curve=[(128, 15, 0.8, 0.75, 10), (256, 30, 0.9, 0.88, 20), (385, 45, 0.93, 0.91, 30)],
            end=31,
        )
    ],
    # A curve in round 0 (24 of its 30 infer passes are scoring), none in round 1 or final;
    # the clock at round 0's epochs 5 and 8 s, at round 1's end 12 s, the final's 15 s.
    "m2": [
        _round(0, 30, 30, 0.6, 0.55, curve=[(15, 3, 0.5, 0.45, 5), (30, 6, 0.6, 0.55, 8)], end=9),
        _round(1, 45, 15, 0.7, 0.66, end=12),
        _round(2, 9, 3, 0.72, 0.7, phase="final", end=15),
    ],
    # Older runs: no clock; the first also has no curves and no validation balanced accuracy.
    "random": [_round(0, 30, 30, 0.5), _round(1, 70, 30, 0.65)],
    "norm_balanced": [
        _round(0, 50, 30, 0.4, 0.4),
        _round(1, 50, 30, 0.5, 0.45),
        _round(2, 74, 18, 0.6, 0.58),
    ],
    "infobatch": [_round(0, 270, 90, 0.9)],
}
COMPUTE = {"full": 400, "m2": 100, "random": 120, "norm_balanced": 200, "infobatch": 300}
WALL = {"full": 40.0, "m2": 16.0, "random": 20.0, "norm_balanced": 30.0, "infobatch": 35.0}


def _summary(strategy):
    per_round = PER_ROUND[strategy]
    last = per_round[-1]
    s = {
        "name": f"job-{strategy}",
        "strategy": strategy,
        "rounds": sum(r["phase"] == "round" for r in per_round),
        "stop_reason": f"{strategy} stopped",
        "val_accuracy": last["val_accuracy"],
        "test_accuracy": last["val_accuracy"] - 0.01,
        "test_balanced_accuracy": last["val_accuracy"] - 0.02,
        "subset_size": sum(COUNTS[strategy][-1]),
        "train_sample_passes": sum(r["train_sample_passes"] for r in per_round),
        "infer_sample_passes": sum(r["infer_sample_passes"] for r in per_round),
        "compute": COMPUTE[strategy],
        "wall_seconds": {
            "train": 1.0,
            "score": 0.0,
            "select": 0.0,
            "ingest": 0.0,
            "total": WALL[strategy],
        },
        "per_round": per_round,
    }
    if "val_balanced_accuracy" in last:
        s["val_balanced_accuracy"] = last["val_balanced_accuracy"]
    return s


def _fake_run(run_dir, strategy):
    """The parts of a run dir the report reads: info.json, train shards, the run state."""
    data = run_dir / "data"
    (data / "train").mkdir(parents=True)
    info = {
        "num_classes": 3,
        "x_shape": [2],
        "counts": {"train": 12, "val": 0, "test": 0},
        "class_counts": {"train": [6, 3, 3], "val": [0, 0, 0], "test": [0, 0, 0]},
        "class_names": None,
        "source": "hand-made",
    }
    (data / "info.json").write_text(json.dumps(info))
    ids = np.arange(11, -1, -1)  # not in id order, in two shards, with an x column to skip
    for part, chunk in enumerate(np.array_split(ids, 2)):
        pq.write_table(
            pa.table(
                {
                    "id": pa.array(chunk, pa.int64()),
                    "label": pa.array([LABELS[i] for i in chunk], pa.int64()),
                    "x": ArrowTensorArray.from_numpy(np.zeros((len(chunk), 2), np.float32)),
                }
            ),
            data / "train" / f"part-{part:05d}.parquet",
        )
    _write_manifest(run_dir, MANIFESTS[strategy])


def _write_manifest(run_dir, rows):
    """A manifest file of (ids, reason, round) groups."""
    ids, reasons, rounds = [], [], []
    for ids_, reason, r in rows:
        ids += list(ids_)
        reasons += [reason] * len(ids_)
        rounds += [r] * len(ids_)
    pq.write_table(
        pa.table(
            {
                "id": pa.array(ids, pa.int64()),
                "round": pa.array(rounds, pa.int32()),
                "reason": pa.array(reasons, pa.string()),
            }
        ),
        run_dir / MANIFEST,
    )


@pytest.fixture
def compared(tmp_path):
    summaries = [_summary(s) for s in MANIFESTS]
    for s in MANIFESTS:
        _fake_run(tmp_path / s, s)
    return tmp_path, summaries


def test_compute_relative_to_full_and_balanced_columns():
    summaries = [_summary(s) for s in MANIFESTS]
    head, rows = table(summaries)
    col = {name: i for i, name in enumerate(head)}
    by = {r[0]: r for r in rows}
    assert {s: by[s][col["vs full"]] for s in by} == {
        "full": "1.000",
        "m2": "0.250",
        "random": "0.300",
        "norm_balanced": "0.500",
        "infobatch": "0.750",
    }
    assert by["m2"][col["test bal acc"]] == "0.7000"
    assert by["m2"][col["val bal acc"]] == "0.7000"
    assert by["random"][col["val bal acc"]] == "-"
    # Within 0.5 points of full's 0.93: only full gets there, at its last epoch.
    assert {s: by[s][col["reach"]] for s in by} == {
        "full": "1.000",
        "m2": "-",
        "random": "-",
        "norm_balanced": "-",
        "infobatch": "-",
    }
    _, rows = table(summaries[1:])  # no `full` run: nothing to compare with
    assert [(r[col["vs full"]], r[col["reach"]]) for r in rows] == [("-", "-")] * 4
    text = comparison_table(summaries).splitlines()
    assert text[0].split()[:5] == ["strategy", "rounds", "subset", "test", "acc"]
    assert text[3].split()[0] == "m2" and text[3].split()[-5] == "0.250"


def test_wall_time_beside_full_and_the_closing_sentence():
    summaries = [_summary(s) for s in ("full", "m2", "random")]
    summaries[1]["wall_seconds"] = {**summaries[1]["wall_seconds"], "total": 10.0}
    head, rows = table(summaries)
    assert [r[head.index("wall vs full")] for r in rows] == ["1.00", "0.25", "0.50"]
    # full's validation came within 0.5 points of its own at 30 s of its 40; m2 never did
    assert [r[head.index("reach wall")] for r in rows] == ["0.75", "-", "-"]
    assert saving_sentence(summaries) == (
        "M2 reached test accuracy 0.7100 against full's 0.9200, at 25% of full's compute and "
        "25% of its wall time."
    )
    assert saving_sentence(summaries[1:]) is None
    assert table(summaries[1:])[1][0][-1] == "-"
    # With what lay outside the training phases recorded: the part no strategy saves.
    for s, outside in zip(summaries[:2], (14.4, 6.6)):
        s["wall_seconds"] = {**s["wall_seconds"], "outside_phases": outside}
    assert saving_sentence(summaries).endswith(
        "25% of its wall time. Of those wall times, 7 s and 14 s went to the start-up, the "
        "ingest and the test, which every strategy pays."
    )


def test_compute_to_reach_is_the_first_validation_at_the_target():
    m2 = _summary("m2")  # validations (16, 0.5), (32, 0.6), (90, 0.7), (100, 0.72)
    assert compute_to_reach(m2, 0.6) == 32
    assert compute_to_reach(m2, 0.65) == 90
    assert compute_to_reach(m2, 0.4) == 16
    assert compute_to_reach(m2, 0.73) is None
    assert compute_to_reach(_summary("full"), 0.88, "val_balanced_accuracy") == 266
    assert compute_to_reach(m2, 0.65, axis=SECONDS) == 12
    assert compute_to_reach(_summary("random"), 0.4, axis=SECONDS) is None  # no clock kept


def test_values_at_equal_compute_are_the_last_validation_within_it():
    m2 = _summary("m2")  # validations (16, 0.5), (32, 0.6), (90, 0.7), (100, 0.72)
    assert value_at(m2, 31.9, "val_accuracy") == 0.5
    assert value_at(m2, 90, "val_accuracy") == 0.7
    assert value_at(m2, 15, "val_accuracy") is None
    # The budget is m2's 100 in all; norm_balanced's round 0 ended at 50 + 30 / 3 = 60, its
    # round 1 at 120; random has no balanced values; full and infobatch validated after 100.
    budget, rows = equal_compute_table([_summary(s) for s in MANIFESTS])
    assert budget == 100
    assert rows == [
        ["full", "-", "-"],
        ["m2", "0.7200", "0.7000"],
        ["random", "0.5000", "-"],
        ["norm_balanced", "0.4000", "0.4000"],
        ["infobatch", "-", "-"],
    ]


def test_curve_points_take_epochs_where_kept_else_rounds():
    s = {name: _summary(name) for name in MANIFESTS}
    # m2: round 0 epochs at 15 + 3/3 and 30 + 6/3; round 1 after round 0's 40 in all, with
    # its scoring (no curve); final at the total.
    assert curve_points(s["m2"]) == [(16, 0.5), (32, 0.6), (40 + 45 + 5, 0.7), (100, 0.72)]
    assert curve_points(s["full"], "val_balanced_accuracy") == [
        (133, 0.75),
        (266, 0.88),
        (400, 0.91),
    ]
    assert curve_points(s["random"]) == [(40, 0.5), (120, 0.65)]
    assert curve_points(s["random"], "val_balanced_accuracy") == []
    # On the wall clock: each epoch's reading, else the round's end; none for older runs.
    assert curve_points(s["m2"], axis=SECONDS) == [(5, 0.5), (8, 0.6), (12, 0.7), (15, 0.72)]
    assert curve_points(s["full"], "val_balanced_accuracy", SECONDS) == [
        (10, 0.75),
        (20, 0.88),
        (30, 0.91),
    ]
    assert curve_points(s["random"], axis=SECONDS) == []


def test_accuracy_figure_has_one_line_per_strategy_against_compute_and_wall_time():
    summaries = [_summary(s) for s in MANIFESTS]
    acc, bal, acc_wall, bal_wall = accuracy_figure(summaries).axes
    assert [line.get_label() for line in acc.get_lines()] == list(MANIFESTS)
    m2 = acc.get_lines()[1]
    assert list(m2.get_xdata()) == [16, 32, 90, 100]
    assert list(m2.get_ydata()) == [0.5, 0.6, 0.7, 0.72]
    # Balanced accuracy: lines only for runs that recorded it, a test star for every run.
    assert [line.get_label() for line in bal.get_lines()] == ["full", "m2", "norm_balanced"]
    stars = [tuple(c.get_offsets()[0]) for c in bal.collections]
    assert stars == [(s["compute"], s["test_balanced_accuracy"]) for s in summaries]
    # Against the wall clock: lines for the runs that kept one, stars at each run's total.
    assert [line.get_label() for line in acc_wall.get_lines()] == ["full", "m2"]
    assert list(acc_wall.get_lines()[1].get_xdata()) == [5, 8, 12, 15]
    stars = [tuple(c.get_offsets()[0]) for c in acc_wall.collections]
    assert stars == [(WALL[s["strategy"]], s["test_accuracy"]) for s in summaries]
    assert "wall seconds" in bal_wall.get_xlabel()


def test_subset_class_counts_per_round_leave_out_dropped(compared):
    root, summaries = compared
    for s in summaries:
        rounds = [r["round"] for r in s["per_round"] if r["phase"] == "round"]
        counts = subset_class_counts(root / s["strategy"], rounds)
        assert counts.tolist() == COUNTS[s["strategy"]], s["strategy"]


def test_class_balance_figure_stacks_the_counts(compared):
    root, summaries = compared
    fig = class_balance_figure(root, summaries)
    panels = [ax for ax in fig.axes if ax.get_title()]
    assert [ax.get_title() for ax in panels] == list(MANIFESTS)
    nb = panels[3]
    heights = [[bar.get_height() for bar in per_class] for per_class in nb.containers]
    assert heights == np.array(COUNTS["norm_balanced"]).T.tolist()


def test_subset_class_counts_names_an_unknown_id(tmp_path):
    _fake_run(tmp_path, "m2")
    _write_manifest(tmp_path, [*MANIFESTS["m2"], ([99], "hard", 3)])
    with pytest.raises(DataError, match=r"manifest.parquet: id 99 is not in the training"):
        subset_class_counts(tmp_path, [3])


def test_report_files_and_rebuild(compared, capsys):
    root, summaries = compared
    path = write_report(root, summaries)
    assert path == root / REPORT
    for png in (ACCURACY_PNG, BALANCE_PNG):
        with Image.open(root / png) as im:
            assert im.format == "PNG" and im.width > 400 and im.height > 200
    md = path.read_text()
    assert f"]({ACCURACY_PNG})" in md and f"]({BALANCE_PNG})" in md
    head, rows = table(summaries)
    for cells in [head, *rows]:
        assert "| " + " | ".join(cells) + " |" in md
    assert "## At equal compute" in md and "| m2 | 0.7200 | 0.7000 |" in md

    # `raysift report RUN_DIR` rebuilds the same files from comparison.json.
    for f in (REPORT, ACCURACY_PNG, BALANCE_PNG):
        (root / f).unlink()
    atomic_write_json(root / COMPARISON, summaries)
    assert cli.main(["report", str(root)]) == 0
    assert (root / REPORT).read_text() == md
    assert (root / ACCURACY_PNG).exists() and (root / BALANCE_PNG).exists()
    out = capsys.readouterr().out
    assert out.splitlines()[0].startswith("strategy") and f"report: {path}" in out


def test_rebuild_names_what_is_missing(tmp_path, capsys):
    assert cli.main(["report", str(tmp_path)]) == 2
    assert f"{tmp_path / COMPARISON} does not exist" in capsys.readouterr().err
    s = _summary("m2")
    del s["compute"]
    atomic_write_json(tmp_path / COMPARISON, [_summary("full"), s])
    with pytest.raises(DataError, match=r"comparison.json: entry 1 lacks compute"):
        rebuild_report(tmp_path)
