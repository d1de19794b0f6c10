"""pipeline.data.keypoint_frame: a keypoint head predicts in its training frame; moves to and from each image's
pixels."""

import numpy as np

from pipeline.data.keypoint_frame import to_frame, to_image_pixels, unmirror_widths

NAMES = ["nose_x", "nose_y", "score"]
META = {"task": "regression", "target_names": NAMES, "target_frame": [96, 96]}


def test_predictions_move_from_the_frame_into_each_images_pixels():
    pred = np.array([[47.5, 47.5, 3.0], [0.0, 95.0, 3.0]])
    got = to_image_pixels(META, pred, [[192, 192], [96, 48]])
    np.testing.assert_allclose(got, [[95.5, 95.5, 3.0], [-0.25, 95.0, 3.0]])  # centre stays centre; score as is
    np.testing.assert_allclose(to_frame(META, got, [[192, 192], [96, 48]]), pred, atol=1e-5)


def test_no_frame_unknown_sizes_and_classifiers_are_left_alone():
    pred = np.array([[10.0, 20.0, 1.0]])
    assert to_image_pixels({**META, "target_frame": None}, pred, [[192, 192]]).tolist() == pred.tolist()
    assert to_image_pixels(META, pred, [[0, 0]]).tolist() == pred.tolist()  # invalid row: size unknown
    assert to_image_pixels(META, pred, None).tolist() == pred.tolist()
    assert to_image_pixels({"task": "classification"}, pred, [[192, 192]]).tolist() == pred.tolist()
    assert to_frame({**META, "target_frame": None}, pred, [[192, 192]]).tolist() == pred.tolist()


def test_mirrors_are_taken_about_the_frame_width_when_there_is_one():
    assert unmirror_widths({"target_frame": None}, [64, 80], 2, (32, 32)).tolist() == [64, 80]
    assert unmirror_widths({}, None, 2, (32, 40)).tolist() == [40, 40]
    assert unmirror_widths(META, [64, 80], 2, (32, 32)).tolist() == [96, 96]
