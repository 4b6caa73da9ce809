"""IoU, the feedback categories and annotations on hand-made boxes, the operator and the job."""

import argparse

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from raysift.batch.feedback import add_commands, run_feedback
from raysift.operators.contract import DataError
from raysift.operators.feedback import INPUT_SCHEMA, annotate, feedback, iou, review


@pytest.mark.parametrize(
    "a, b, expected",
    [
        ([0, 0, 2, 2], [0, 0, 2, 2], 1.0),  # identical
        ([0, 0, 2, 2], [1, 0, 3, 2], 2 / 6),  # overlap 2, union 6
        ([0, 0, 1, 1], [1, 0, 2, 1], 0.0),  # touching along an edge
        ([0, 0, 1, 1], [1, 1, 2, 2], 0.0),  # touching at a corner
        ([0, 0, 4, 4], [1, 1, 3, 3], 4 / 16),  # nested
        ([0, 0, 1, 1], [5, 5, 6, 6], 0.0),  # disjoint
        ([1, 1, 1, 1], [1, 1, 1, 1], 0.0),  # zero area on both sides
    ],
)
def test_iou_by_hand(a, b, expected):
    assert iou([a], [b])[0, 0] == pytest.approx(expected, abs=1e-12)
    assert iou([b], [a])[0, 0] == pytest.approx(expected, abs=1e-12)


def test_iou_is_all_pairs():
    got = iou([[0, 0, 2, 2], [1, 0, 3, 2]], [[0, 0, 2, 2], [5, 5, 6, 6], [1, 0, 3, 2]])
    np.testing.assert_allclose(got, [[1, 0, 1 / 3], [1 / 3, 0, 1]])
    assert iou(np.zeros((0, 4)), [[0, 0, 1, 1]]).shape == (0, 1)


def check(pred, scores, true, conf=0.5, thr=0.5):
    return review(
        np.array(pred, float).reshape(-1, 4),
        np.array(scores, float),
        np.array(true, float).reshape(-1, 4),
        conf,
        thr,
    )


def test_correct_takes_the_most_confident_matching_box_under_the_threshold():
    r = check(
        pred=[
            [0, 0, 10, 9],  # 0.9, confident: the person's box is found
            [0, 0, 10, 10],  # 0.3, IoU 1
            [1, 1, 10, 10],  # 0.4, IoU 0.81: the most confident candidate
            [0, 0, 5, 5],
        ],  # 0.45, IoU 0.25: not a candidate
        scores=[0.9, 0.3, 0.4, 0.45],
        true=[[0, 0, 10, 10]],
    )
    assert (r.category, r.n_correct, r.n_missed, r.n_false) == ("correct", 1, 0, 0)
    assert r.label_boxes.tolist() == [[1, 1, 10, 10]]
    assert r.negative.shape == (0, 4)


def test_correct_without_a_candidate_falls_back_to_the_persons_box():
    r = check(pred=[[0, 0, 10, 9], [20, 20, 30, 30]], scores=[0.8, 0.3], true=[[0, 0, 10, 10]])
    assert r.category == "correct" and r.label_boxes.tolist() == [[0, 0, 10, 10]]


def test_missed_and_a_touching_false_box():
    # The only matching prediction is under the threshold; the confident one only touches.
    r = check(pred=[[0, 0, 2, 2], [2, 0, 4, 2]], scores=[0.3, 0.9], true=[[0, 0, 2, 2]])
    assert (r.category, r.n_correct, r.n_missed, r.n_false) == ("missed", 0, 1, 1)
    assert r.label_boxes.tolist() == [[0, 0, 2, 2]]
    assert r.negative.tolist() == [[2, 0, 4, 2]]


def test_nested_boxes_match_only_from_their_iou_up():
    pred, true = [[1, 1, 3, 3]], [[0, 0, 4, 4]]  # IoU exactly 0.25
    r = check(pred, [0.9], true, thr=0.5)
    assert (r.category, r.n_missed, r.n_false) == ("missed", 1, 1)
    r = check(pred, [0.9], true, thr=0.25)
    assert (r.category, r.n_correct, r.n_false) == ("correct", 1, 0)


def test_false_and_empty_images_and_the_score_threshold_edge():
    r = check(pred=[[5, 5, 6, 6], [0, 0, 1, 1]], scores=[0.5, 0.2], true=[])
    assert (r.category, r.n_false) == ("false", 1)  # a score equal to the threshold is confident
    assert r.label_boxes.shape == (0, 4) and r.negative.tolist() == [[5, 5, 6, 6]]
    r = check(pred=[[0, 0, 1, 1]], scores=[0.2], true=[])
    assert (r.category, r.n_correct, r.n_missed, r.n_false) == ("empty", 0, 0, 0)


def test_a_duplicate_detection_is_not_false_and_each_person_box_gets_its_label():
    r = check(
        pred=[[0, 0, 2, 2], [0, 0, 2, 2], [10, 10, 12, 12]],
        scores=[0.9, 0.8, 0.1],
        true=[[0, 0, 2, 2], [10, 10, 12, 12]],
    )
    assert (r.category, r.n_correct, r.n_missed, r.n_false) == ("missed", 1, 1, 0)
    assert r.label_boxes.tolist() == [[0, 0, 2, 2], [10, 10, 12, 12]]


def table(rows):
    return pa.table(
        {name: [r[i] for r in rows] for i, name in enumerate(INPUT_SCHEMA.names)},
        schema=INPUT_SCHEMA,
    )


ROWS = [
    (1, [[0, 0, 10, 9], [1, 1, 10, 10]], [0.9, 0.4], [[0, 0, 10, 10]]),  # correct
    (2, [[0, 0, 2, 2], [2, 0, 4, 2]], [0.3, 0.9], [[0, 0, 2, 2]]),  # missed (+ false)
    (3, [[5, 5, 6, 6]], [0.7], []),  # false
    (4, [], [], []),  # empty
]


def test_bad_rows_name_the_column_and_the_image():
    bad_box = [(9, [], [], [[0, 0, 1, 1]]), (8, [], [], [[2, 0, 1, 1]])]
    with pytest.raises(DataError, match="'true_boxes'.*image_id 8.*x2 < x1"):
        annotate(table(bad_box))
    with pytest.raises(DataError, match="'pred_scores'.*image_id 7.*1.5"):
        annotate(table([(7, [[0, 0, 1, 1]], [1.5], [])]))
    with pytest.raises(DataError, match="'pred_scores'.*image_id 6.*1 scores for 2 boxes"):
        annotate(table([(6, [[0, 0, 1, 1], [0, 0, 1, 1]], [0.5], [])]))
    with pytest.raises(DataError, match="'pred_boxes'.*image_id 5.*4 coordinates"):
        annotate(table([(5, [[0, 0, 1]], [0.5], [])]))
    with pytest.raises(DataError, match="true_boxes"):
        annotate(table(ROWS).drop_columns(["true_boxes"]))
    with pytest.raises(ValueError, match="iou_threshold"):
        annotate(table(ROWS), iou_threshold=0.0)


def test_the_operator_on_ray_data(ray_session):
    ds = ray_session.data.from_arrow([table(ROWS[:2]), table(ROWS[2:])])
    out = feedback(ds, conf_threshold=0.5, iou_threshold=0.5).take_all()
    assert [(r["image_id"], r["category"]) for r in out] == [
        (1, "correct"),
        (2, "missed"),
        (3, "false"),
        (4, "empty"),
    ]
    assert [r["label_boxes"] for r in out] == [[[1, 1, 10, 10]], [[0, 0, 2, 2]], [], []]
    assert [r["negative"] for r in out] == [[], [[2, 0, 4, 2]], [[5, 5, 6, 6]], []]
    assert [(r["n_correct"], r["n_missed"], r["n_false"]) for r in out] == [
        (1, 0, 0),
        (0, 1, 1),
        (0, 0, 1),
        (0, 0, 0),
    ]


def test_the_cli_job_writes_parquet_and_surfaces_bad_rows(ray_session, tmp_path, capsys):
    pq.write_table(table(ROWS), tmp_path / "in.parquet")
    parser = argparse.ArgumentParser()
    add_commands(parser.add_subparsers(dest="command"))
    args = parser.parse_args(
        [
            "feedback",
            str(tmp_path / "in.parquet"),
            str(tmp_path / "out"),
            "--conf-threshold",
            "0.95",
            "--iou-threshold",
            "0.5",
        ]
    )
    args.func(args)
    # At 0.95 nothing is confident: images 1 and 2 are missed, 3 and 4 empty.
    assert "(0 correct, 2 missed, 0 false, 2 empty)" in capsys.readouterr().out
    for flag, value in [("--iou-threshold", "0"), ("--conf-threshold", "1.5")]:
        with pytest.raises(SystemExit):
            parser.parse_args(["feedback", "in", "out", flag, value])
    err = capsys.readouterr().err
    assert "--iou-threshold: must be in (0, 1], got 0" in err
    assert "--conf-threshold: must be in [0, 1], got 1.5" in err
    out = pq.read_table(tmp_path / "out").sort_by("image_id")
    assert out["category"].to_pylist() == ["missed", "missed", "empty", "empty"]
    assert out.schema.field("label_boxes").type == pa.list_(pa.list_(pa.float32()))

    pq.write_table(table([(8, [], [], [[2, 0, 1, 1]])]), tmp_path / "bad.parquet")
    with pytest.raises(DataError) as err:
        run_feedback(str(tmp_path / "bad.parquet"), str(tmp_path / "bad_out"))
    assert str(err.value) == (
        "column 'true_boxes': image_id 8 has box [2.0, 0.0, 1.0, 1.0] with x2 < x1 or y2 < y1"
    )
    pq.write_table(table(ROWS).drop_columns(["pred_scores"]), tmp_path / "nocol.parquet")
    with pytest.raises(DataError, match="missing column.*pred_scores"):
        run_feedback(str(tmp_path / "nocol.parquet"), str(tmp_path / "nocol_out"))
