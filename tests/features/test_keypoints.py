"""Keypoint conventions: left/right pairs, mirroring, specialist groups."""

import json

import numpy as np
import pytest

from features.keypoints import (
    KAGGLE_KEYPOINTS,
    SPECIALIST_GROUPS,
    flip_pairs,
    flip_targets,
    load_groups,
    rescale_targets,
    x_columns,
    y_columns,
)


def test_kaggle_names():
    assert len(KAGGLE_KEYPOINTS) == 30 and len(set(KAGGLE_KEYPOINTS)) == 30
    assert KAGGLE_KEYPOINTS[:4] == ("left_eye_center_x", "left_eye_center_y",
                                    "right_eye_center_x", "right_eye_center_y")
    assert KAGGLE_KEYPOINTS[-2:] == ("mouth_center_bottom_lip_x", "mouth_center_bottom_lip_y")


def test_flip_pairs_kaggle():
    pairs = flip_pairs(KAGGLE_KEYPOINTS)
    assert len(pairs) == 12  # 6 left/right keypoint pairs x 2 coordinates
    named = {(KAGGLE_KEYPOINTS[i], KAGGLE_KEYPOINTS[j]) for i, j in pairs}
    assert ("left_eye_center_x", "right_eye_center_x") in named
    assert ("mouth_left_corner_y", "mouth_right_corner_y") in named
    assert ("left_eyebrow_outer_end_x", "right_eyebrow_outer_end_x") in named
    for i, j in pairs:
        a, b = KAGGLE_KEYPOINTS[i], KAGGLE_KEYPOINTS[j]
        assert a.replace("left", "right") == b and a[-2:] == b[-2:]


def test_flip_pairs_case_and_unpaired():
    assert flip_pairs(["Left_Hand_X", "nose_x", "RIGHT_hand_x", "left_only_x"]) == [(0, 2)]
    assert flip_pairs(["leftover_x", "rightover_x"]) == []  # tokens, not substrings


def test_x_columns():
    assert x_columns(["a_x", "a_Y", "B_X", "box"]).tolist() == [True, False, True, False]
    assert y_columns(["a_x", "a_Y", "B_X", "boy"]).tolist() == [False, True, False, False]


def test_rescale_targets_maps_pixel_edges_and_centres():
    names = ["eye_x", "eye_y", "score"]
    t = np.array([[-0.5, -0.5, 7.0], [95.5, 47.5, 7.0], [0.0, 0.0, np.nan], [np.nan, 10.0, 1.0]])
    got = rescale_targets(t, names, (48, 96), (96, 192))  # twice the size on both axes
    # Image edges stay edges, pixel 0's centre becomes the centre of the 2x2 block (0.5), others untouched.
    np.testing.assert_array_equal(got[:3], [[-0.5, -0.5, 7.0], [191.5, 95.5, 7.0], [0.5, 0.5, np.nan]])
    assert np.isnan(got[3, 0]) and got[3, 1:].tolist() == [20.5, 1.0]
    np.testing.assert_allclose(rescale_targets(got, names, (96, 192), (48, 96)), t)  # and back


def test_rescale_targets_per_row_sizes_and_single_rows():
    names = ["a_x", "a_y"]
    t = np.array([[10.0, 20.0], [10.0, 20.0]])
    got = rescale_targets(t, names, (96, 96), [[96, 96], [192, 48]])
    np.testing.assert_allclose(got, [[10.0, 20.0], [4.75, 40.5]])
    assert rescale_targets(t[0], names, (96, 96), (96, 96)).shape == (2,)


def test_flip_targets_convention_and_involution(rng):
    names = ["left_eye_x", "left_eye_y", "right_eye_x", "right_eye_y", "nose_x", "nose_y"]
    t = np.array([[60.0, 30.0, 35.0, 31.0, 48.0, np.nan]], np.float32)
    f = flip_targets(t, names, 96)
    # left eye <- mirrored right eye: x = 95 - 35, the y follows its point
    assert f[0, :4].tolist() == [60.0, 31.0, 35.0, 30.0]
    assert f[0, 4] == 47.0 and np.isnan(f[0, 5])
    assert t[0, 0] == 60.0  # input untouched
    many = rng.uniform(0, 95, (20, 30)).astype(np.float32)
    many[rng.random(many.shape) < 0.3] = np.nan
    widths = rng.integers(64, 128, 20)
    back = flip_targets(flip_targets(many, KAGGLE_KEYPOINTS, widths), KAGGLE_KEYPOINTS, widths)
    np.testing.assert_allclose(back, many, atol=1e-4)
    assert np.array_equal(np.isnan(back), np.isnan(many))
    one = flip_targets(many[0], KAGGLE_KEYPOINTS, 96)
    assert one.shape == (30,)


def test_flip_pixel_centre_matches_array_flip():
    img = np.zeros((5, 8))
    img[2, 1] = 1
    flipped = img[:, ::-1]
    x = flip_targets([[1.0, 2.0]], ["p_x", "p_y"], 8)[0]
    assert flipped[int(x[1]), int(x[0])] == 1


def test_flip_targets_shape_errors():
    with pytest.raises(ValueError, match="names"):
        flip_targets(np.zeros((2, 3)), ["a_x", "a_y"], 96)
    with pytest.raises(ValueError, match="widths"):
        flip_targets(np.zeros((2, 2)), ["a_x", "a_y"], [96, 96, 96])


def test_specialist_groups_cover_kaggle():
    cols = [c for g in SPECIALIST_GROUPS.values() for c in g]
    assert sorted(cols) == sorted(KAGGLE_KEYPOINTS)
    assert list(SPECIALIST_GROUPS) == ["eye_centers", "nose_tip", "mouth_corners_top_lip",
                                       "bottom_lip", "eye_corners", "eyebrows"]
    groups = load_groups(None, KAGGLE_KEYPOINTS)
    assert groups["nose_tip"] == [20, 21]
    assert len(groups["eye_corners"]) == 8


def test_load_groups_json(tmp_path):
    p = tmp_path / "groups.json"
    p.write_text(json.dumps({"eyes": ["left_eye_center_x", "left_eye_center_y"], "nose": ["nose_tip_x"]}))
    assert load_groups(str(p), KAGGLE_KEYPOINTS) == {"eyes": [0, 1], "nose": [20]}
    p.write_text(json.dumps({"eyes": ["left_eye_centre_x"]}))
    with pytest.raises(ValueError, match=r"groups\.json.*'left_eye_centre_x'"):
        load_groups(str(p), KAGGLE_KEYPOINTS)
    p.write_text("{nope")
    with pytest.raises(ValueError, match=r"groups\.json: not valid JSON"):
        load_groups(str(p), KAGGLE_KEYPOINTS)
    p.write_text(json.dumps({"eyes": []}))
    with pytest.raises(ValueError, match="non-empty list"):
        load_groups(str(p), KAGGLE_KEYPOINTS)
    with pytest.raises(ValueError, match="unknown column"):
        load_groups(None, ["age"])
