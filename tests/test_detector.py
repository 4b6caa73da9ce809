"""The detector: dense targets, the loss and its distillation by hand, decoding, the labels a
person's check gives on hand-made outputs, mAP@0.5 by hand, a training step on one box."""

import copy

import numpy as np
import pytest
import torch

from raysift.adapt.detection_eval import average_precision
from raysift.adapt.detector import (
    DETECTOR,
    FOCAL_ALPHA,
    STRIDE,
    TinyDetector,
    decode,
    detection_loss,
    distillation,
    encode_targets,
    head_gradients,
    nms,
)
from raysift.operators.feedback import review
from raysift.transfer.config import TransferTrainConfig
from raysift.transfer.step import Batch, step_gradients, transfer_step


def test_targets_by_hand():
    # Canvas 20: a 5x5 grid, cell centres 2, 6, 10, 14, 18.
    t = encode_targets(np.array([[4, 4, 16, 16]]), 20)
    owned = np.zeros((5, 5))
    owned[1:4, 1:4] = 1  # centres 6, 10, 14: inside the box and within a stride of 10
    np.testing.assert_array_equal(t[0], owned)
    np.testing.assert_allclose(t[1:5, 2, 2], [1.5, 1.5, 1.5, 1.5])  # (10 - 4) / 4 ...
    np.testing.assert_allclose(t[1:5, 1, 3], [2.5, 0.5, 0.5, 2.5])  # centre (14, 6)
    np.testing.assert_array_equal(t[5], np.ones((5, 5)))
    # A box thinner than a stride: the column of centre 10 only.
    assert np.argwhere(encode_targets(np.array([[9, 4, 11, 16]]), 20)[0]).tolist() == [
        [1, 2],
        [2, 2],
        [3, 2],
    ]
    # A box holding no cell centre: the cell holding its centre owns it anyway.
    tiny = encode_targets(np.array([[0, 0, 2, 2]]), 20)
    assert np.argwhere(tiny[0]).tolist() == [[0, 0]]
    np.testing.assert_allclose(tiny[1:5, 0, 0], [0.5, 0.5, 0.0, 0.0])


def test_the_smaller_box_wins_a_shared_cell_and_negatives_weigh_background():
    t = encode_targets(
        np.array([[4, 4, 8, 8], [0, 0, 16, 16]]),
        20,
        negatives=np.array([[12, 12, 20, 20], [0, 0, 8, 8]]),
        negative_weight=3.0,
    )
    np.testing.assert_allclose(t[1:5, 1, 1], [0.5, 0.5, 0.5, 0.5])  # [4, 4, 8, 8]'s
    assert t[5, 4, 4] == 3.0 and t[0, 4, 4] == 0  # a rejected region: heavier background
    assert t[5, 1, 1] == 1.0  # an owned cell keeps weight 1 inside a negative box
    with pytest.raises(ValueError, match="canvas"):
        encode_targets(np.zeros((0, 4)), 18)


def test_loss_by_hand():
    # Zero outputs: p = 1/2 everywhere, focal term (1 - 1/2)^2 * log 2 times alpha_t.
    targets = torch.from_numpy(encode_targets(np.array([[0, 0, 2, 2]]), 8))[None]
    targets[0, 5, 1, 1] = 2.0  # one background cell weighs twice
    f = 0.25 * np.log(2)
    cls = FOCAL_ALPHA * f + (1 - FOCAL_ALPHA) * f * (2 + 1 + 1)
    box = 0.5 + 0.5  # |0 - (0.5, 0.5, 0, 0)|
    got = detection_loss(torch.zeros(1, 5, 2, 2), targets)
    assert float(got) == pytest.approx(cls + box)  # one owned cell: normaliser 1
    # The loss of a batch is the sum of its images' losses.
    two = detection_loss(torch.zeros(2, 5, 2, 2), targets.repeat(2, 1, 1, 1))
    assert float(two) == pytest.approx(2 * (cls + box))


def test_distillation_is_zero_when_the_outputs_agree_and_positive_otherwise():
    g = torch.Generator().manual_seed(0)
    out = torch.randn(3, 5, 4, 4, generator=g)
    assert float(distillation(out, out)) == pytest.approx(0.0, abs=1e-6)
    assert float(distillation(out + 0.1 * torch.randn(3, 5, 4, 4, generator=g), out)) > 0


def test_distillation_is_zero_when_the_model_equals_the_meta_model():
    # BatchNorm in training mode: the teacher normalises by the same batch, so the history
    # gradient with distillation is the history gradient without it.
    torch.manual_seed(0)
    model = TinyDetector(8)
    meta = copy.deepcopy(model)
    x = torch.rand(4, 1, 16, 16)
    y = torch.from_numpy(np.stack([encode_targets(np.array([[2, 2, 10, 10]]), 16)] * 4))
    params = list(model.parameters())
    model.train()
    new, hist = Batch(x[:2], y[:2], 2), Batch(x[2:], y[2:], 2)
    for joint in (False, True):
        _, plain = step_gradients(model, params, new, hist, DETECTOR, joint=joint)
        _, taught = step_gradients(model, params, new, hist, DETECTOR, meta, 5.0, joint)
        torch.testing.assert_close(taught, plain, atol=1e-6, rtol=1e-5)
    with torch.no_grad():
        meta.head.bias += 0.5
    _, moved = step_gradients(model, params, new, hist, DETECTOR, meta, 5.0)
    assert (moved - plain).abs().max() > 1e-3


def outputs(cells: dict, g: int = 4) -> torch.Tensor:
    """Hand-made detector outputs: {(row, col): (score, box)}, everything else scores 1e-4."""
    out = torch.zeros(1, 5, g, g)
    out[0, 0] = float(np.log(1e-4 / (1 - 1e-4)))
    for (r, c), (score, (x1, y1, x2, y2)) in cells.items():
        cx, cy = (c + 0.5) * STRIDE, (r + 0.5) * STRIDE
        out[0, 0, r, c] = float(np.log(score / (1 - score)))
        out[0, 1:5, r, c] = torch.tensor([cx - x1, cy - y1, x2 - cx, y2 - cy]) / STRIDE
    return out


def test_decode_gives_boxes_under_the_threshold_best_first_and_nms_on_request():
    out = outputs(
        {
            (1, 1): (0.9, (2, 2, 10, 10)),
            (1, 2): (0.4, (3, 2, 11, 10)),
            (3, 3): (0.2, (12, 12, 16, 16)),
        }
    )
    ((boxes, scores),) = decode(out, min_score=0.1)
    np.testing.assert_allclose(scores, [0.9, 0.4, 0.2], rtol=1e-5)
    np.testing.assert_allclose(boxes, [[2, 2, 10, 10], [3, 2, 11, 10], [12, 12, 16, 16]], atol=1e-5)
    ((boxes, scores),) = decode(out, min_score=0.1, nms_iou=0.5)  # IoU 56/72 suppresses 0.4
    np.testing.assert_allclose(scores, [0.9, 0.2], rtol=1e-5)
    assert decode(out, min_score=0.3, top_k=1)[0][1].shape == (1,)
    assert nms(
        np.array([[0, 0, 4, 4], [0, 0, 4, 3], [8, 8, 9, 9]], float), np.array([0.5, 0.9, 0.1]), 0.5
    ).tolist() == [1, 2]


def test_a_person_s_check_of_hand_made_outputs_gives_iou_based_labels():
    out = outputs(
        {
            (1, 1): (0.9, (2, 2, 10, 10)),  # confident, on the first target
            (1, 2): (0.4, (3, 2, 11, 10)),  # under the threshold, IoU 56/72
            (2, 1): (0.3, (2, 2, 10, 10)),  # under, IoU 1 but less confident
            (0, 3): (0.2, (12, 0, 16, 2)),  # under, IoU 1/2 - on the second target
            (3, 3): (0.8, (12, 12, 16, 16)),
        }
    )  # confident, on nothing: false
    ((boxes, scores),) = decode(out, min_score=0.1)
    true = np.array([[2, 2, 10, 10], [12, 0, 16, 4]], float)
    r = review(boxes, scores, true, conf_threshold=0.5, iou_threshold=0.6)
    assert (r.category, r.n_correct, r.n_missed, r.n_false) == ("missed", 1, 1, 1)
    # correct: the most confident box under the threshold that clears IoU 0.6 with the
    # person's box; missed: the person's box; false: a negative.
    np.testing.assert_allclose(r.label_boxes, [[3, 2, 11, 10], [12, 0, 16, 4]], atol=1e-5)
    np.testing.assert_allclose(r.negative, [[12, 12, 16, 16]], atol=1e-5)
    t = encode_targets(r.label_boxes, 16, r.negative, negative_weight=3.0)
    assert t[0, 0, 3] == 1 and t[5, 3, 3] == 3.0 and t[0, 3, 3] == 0


def test_average_precision_by_hand():
    box, far = [0, 0, 10, 10], [20, 20, 30, 30]
    detections = [
        (np.array([box, box], float), np.array([0.9, 0.8])),  # TP, duplicate: FP
        (np.array([far, [50, 50, 60, 60]], float), np.array([0.7, 0.6])),
    ]  # TP, FP
    truths = [np.array([box], float), np.array([box, far], float)]
    # By score: TP, FP, TP, FP over 3 true boxes: recall 1/3, 1/3, 2/3, 2/3; precision
    # 1, 1/2, 2/3, 1/2; made non-increasing 1, 2/3, 2/3, 1/2: AP = 1/3 + 1/3 * 2/3.
    assert average_precision(detections, truths) == pytest.approx(5 / 9)
    perfect = [(np.array([box], float), np.array([0.5]))] * 2
    assert average_precision(perfect, [np.array([box], float)] * 2) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="truths"):
        average_precision([(np.zeros((0, 4)), np.zeros(0))], [np.zeros((0, 4))])


def test_head_gradients_are_each_image_s_gradient_of_the_head():
    torch.manual_seed(0)
    model = TinyDetector(8).eval()
    x = torch.rand(3, 1, 16, 16)
    y = torch.from_numpy(
        np.stack(
            [
                encode_targets(np.array(b, float), 16)
                for b in ([[2, 2, 9, 9]], [[8, 4, 15, 12]], [[1, 9, 7, 15]])
            ]
        )
    )
    got = head_gradients(model, x, y)
    for i in range(3):
        model.zero_grad()
        detection_loss(model(x[i : i + 1]), y[i : i + 1]).backward()
        w, b = model.head.weight.grad[:, :, 0, 0], model.head.bias.grad
        np.testing.assert_allclose(
            got[i], torch.cat([w, b[:, None]], 1).flatten().numpy(), atol=1e-6
        )


def test_training_steps_on_a_canvas_with_one_known_box_find_it():
    canvas = np.zeros((1, 1, 16, 16), np.float32)
    canvas[0, 0, 4:12, 3:9] = 1.0
    true = np.array([[3, 4, 9, 12]], float)
    y = torch.from_numpy(encode_targets(true, 16))[None]
    x = torch.from_numpy(canvas)
    torch.manual_seed(0)
    model = TinyDetector(8)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    train = TransferTrainConfig(rule="finetune")
    losses = []
    for _ in range(60):
        with torch.no_grad():
            losses.append(float(detection_loss(model.train()(x), y)))
        transfer_step(model, opt, Batch(x, y, 1), None, train, DETECTOR)
    assert losses[1] < losses[0] and losses[-1] < 0.2 * losses[0]
    ((boxes, scores),) = decode(model.eval()(x), min_score=0.0, nms_iou=0.5)
    from raysift.operators.feedback import iou

    assert scores[0] > 0.5 and iou(boxes[:1], true)[0, 0] > 0.7
