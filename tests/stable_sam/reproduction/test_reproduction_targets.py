"""The issue's targets as checked on a reproduction table, and the RESULTS.md section."""
import copy

import pytest

from stable_sam.reproduction.pipeline import ALL_METHODS, KINDS
from stable_sam.reproduction.targets import check_targets, markdown_section


def _table():
    # A table that meets every target by a small margin, built from the paper's story.
    miou = {"sam": {"box": 80, "noisy_box": 50, "points1": 40, "points3": 60},
            "stable_sam": {"box": 79, "noisy_box": 76, "points1": 56, "points3": 70},
            "stable_sam_no_drp": {"box": 78, "noisy_box": 74, "points1": 54, "points3": 68},
            "stable_sam_no_rts": {"box": 80, "noisy_box": 60, "points1": 45, "points3": 65},
            "pt_sam": {"box": 79, "noisy_box": 70, "points1": 50, "points3": 66},
            "dt_sam": {"box": 81, "noisy_box": 72, "points1": 52, "points3": 69}}
    msf = {"sam": 60, "stable_sam": 81}
    params = {"sam": 0, "stable_sam": 83_000, "stable_sam_no_drp": 79_000,
              "stable_sam_no_rts": 83_000, "pt_sam": 140_000, "dt_sam": 4_150_000}
    # prompt-following: Stable-SAM agrees across objects a little more than the base, and is
    # stable but wrong a little less often
    agreement = {"sam": 20.0, "stable_sam": 24.0}
    wrong = {"sam": 6.0, "stable_sam": 5.0}
    return {"box_fill_mIoU": 55.0, "test_targets": 240, "methods": {
        m: {"trainable_params": params[m], "kinds": {
            k: {"mIoU": float(miou[m][k]), "mBIoU": float(miou[m][k]) - 5,
                "mSF": None if k == "box" else float(msf.get(m, 70))} for k in KINDS},
            "follow": {k: {"cross_agreement": agreement.get(m, 22.0),
                           "stable_but_wrong": None if k == "box" else wrong.get(m, 5.5)}
                       for k in KINDS}}
        for m in ALL_METHODS}}


def test_all_met():
    assert [met for _, met, _ in check_targets(_table())] == [True] * 13


@pytest.mark.parametrize("change, target", [
    (lambda t: t["methods"]["sam"]["kinds"]["box"].update(mIoU=74.9), 0),  # below 75
    (lambda t: t.update(box_fill_mIoU=60.1), 0),  # less than 20 above filling the box
    (lambda t: t.pop("box_fill_mIoU"), 0),  # not measured is not met
    (lambda t: t["methods"]["sam"]["kinds"]["noisy_box"].update(mIoU=65.1), 1),
    (lambda t: [t["methods"][m]["kinds"]["points1"].update(mIoU=v)  # keep the +15 gain
                for m, v in (("sam", 50.1), ("stable_sam", 65.1))], 2),
    (lambda t: t["methods"]["stable_sam"]["follow"]["points1"].update(cross_agreement=25.1), 7),
    (lambda t: t["methods"]["stable_sam"]["follow"]["box"].update(cross_agreement=25.1), 7),
    (lambda t: t["methods"]["stable_sam"].pop("follow"), 7),
    (lambda t: t["methods"]["stable_sam"]["follow"]["points3"].update(stable_but_wrong=6.1), 8),
])
def test_each_base_and_prompt_following_target_can_be_missed(change, target):
    table = copy.deepcopy(_table())
    change(table)
    missed = [i for i, (_, met, _) in enumerate(check_targets(table)) if not met]
    assert missed == [target] or (target == 7 and missed == [7, 8])


@pytest.mark.parametrize("method, kind, metric, value, target", [
    ("stable_sam", "noisy_box", "mIoU", 74.9, 3),  # more than 5 below the base's GT box
    ("stable_sam", "noisy_box", "mSF", 79.9, 4),  # less than 20 above the base's mSF
    ("stable_sam", "points1", "mIoU", 54.9, 5),  # less than 15 above the base's 1 point
    ("stable_sam", "box", "mIoU", 76.9, 6),  # more than 3 below the base's GT box
    ("stable_sam_no_rts", "noisy_box", "mIoU", 74.0, 9),  # without RTS not below without DRP
    ("stable_sam_no_drp", "noisy_box", "mIoU", 76.5, 9),  # without DRP above Stable-SAM
    ("dt_sam", "points1", "mIoU", 56.0, 10),  # a tie is not "ahead"
    ("pt_sam", "noisy_box", "mIoU", 77.0, 10),
])
def test_each_target_can_be_missed(method, kind, metric, value, target):
    table = copy.deepcopy(_table())
    table["methods"][method]["kinds"][kind][metric] = value
    results = check_targets(table)
    assert [i for i, (_, met, _) in enumerate(results) if not met] == [target]


@pytest.mark.parametrize("count", [199, None])
def test_fewer_than_200_test_targets_is_missed(count):
    table = copy.deepcopy(_table())
    table["test_targets"] = count
    assert [i for i, (_, met, _) in enumerate(check_targets(table)) if not met] == [12]


def test_parameter_ratio_target():
    table = copy.deepcopy(_table())
    table["methods"]["dt_sam"]["trainable_params"] = 39 * 83_000
    assert not check_targets(table)[11][1]


def test_section_marks_missed_targets_and_shows_both_tables():
    table = copy.deepcopy(_table())
    table["methods"]["stable_sam"]["kinds"]["points1"]["mIoU"] = 41.0
    text = markdown_section(table, "stable-sam reproduce --publish", "a machine")
    assert "stable-sam reproduce --publish" in text and "a machine" in text
    assert text.count("MISSED") == 2  # 1-point gain and "ahead under 1 point"
    assert "| Stable-SAM | 83,000 | 79.0 / 74.0 / - | 76.0 / 71.0 / 81.0 |" in text
    assert "| Stable-SAM | 24.0 / - | 24.0 / 5.0 | 24.0 / 5.0 | 24.0 / 5.0 | - |" in text
    assert "240 test targets" in text


def test_section_puts_intervals_beside_miou_and_msf():
    table = copy.deepcopy(_table())
    table["methods"]["sam"]["kinds"]["noisy_box"].update(mIoU_ci=[47.5, 52.25],
                                                          mSF_ci=[55.0, 65.0])
    text = markdown_section(table, "c", "m")
    assert "| 50.0 [47.5, 52.2] / 45.0 / 60.0 [55.0, 65.0] |" in text
    assert "| x | x | x | 76.0 | 71.0 | 81.0 |" in text
