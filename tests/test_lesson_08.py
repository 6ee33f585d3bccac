"""Stage 8 (what each level sees, costs and is for) grades both ways: full marks, zero, and
exactly the points of each realistic mistake."""
import pytest

from conftest import Mistake, grade_both_ways, variant
from conftest import answer as _answer

ASSIGNMENT = "08-levels"


def answer(course, grade_id):
    return _answer(course, ASSIGNMENT, grade_id)


@pytest.mark.slow
def test_levels_grades_both_ways(course):
    rf = answer(course, "receptive-fields")
    stages = answer(course, "stage-fields")
    p3 = answer(course, "predict-p3-macs")
    conv = answer(course, "conv-cost")
    level = answer(course, "level-costs")
    positions = answer(course, "predict-positions")
    anchors = answer(course, "count-anchors")
    rule = answer(course, "fpn-level")
    grade_both_ways(course, ASSIGNMENT, [
        # The step between positions is this layer's stride, not the product of all so far:
        # every field after the second stride-2 layer is too small, and so is every stage's.
        Mistake("rf-stride-not-multiplied",
                {"receptive-fields": variant(rf, "step = step * stride", "step = stride")},
                loses=["rf-chain", "rf-stages"]),
        # The stride always in the 3x3 (torchvision's v1.5), whatever stride_in_1x1 says.
        Mistake("stride-always-in-3x3", {"stage-fields": variant(
            stages, "if stride_in_1x1:\n            return [(1, stride), (3, 1), (1, 1)]",
            "if False:\n            return [(1, stride), (3, 1), (1, 1)]")}, loses=["rf-stages"]),
        # P3 predicted on C2's grid (stride 4).
        Mistake("p3-at-stride-4", {"predict-p3-macs": variant(
            p3, "(height // 8) * (width // 8)", "(height // 4) * (width // 4)")},
            loses=["cost-predict"]),
        # The prediction delegated to the shape engine.
        Mistake("p3-from-the-engine", {"predict-p3-macs": variant(
            p3, "return out_channels * out_channels * 3 * 3 * (height // 8) * (width // 8)",
            "import fpnlab.shapes as S\n    cfg = S.REFERENCE.with_(min_size=min(height, width), "
            "max_size=10 ** 5, out_channels=out_channels)\n    _, c, h, w = S.stage_shapes(height, "
            "width, cfg)['P3']\n    return c * c * 9 * h * w")}, loses=["cost-predict"]),
        # Multiply-adds without the kernel area: every 3x3 is 9 times too cheap.
        Mistake("macs-without-kernel-area", {"conv-cost": variant(
            conv, '"macs": weights * out_height * out_width',
            '"macs": out_channels * in_channels * out_height * out_width')},
            loses=["conv-count", "level-count", "width-ratios"]),
        # A level counted without its lateral 1x1.
        Mistake("level-without-lateral", {"level-costs": variant(
            level, '"params": lateral["params"] + output["params"],\n'
                   '                        "macs": lateral["macs"] + output["macs"]',
            '"params": output["params"], "macs": output["macs"]')},
            loses=["level-count", "width-ratios"]),
        # P6 and P7 grids rounded down instead of up.
        Mistake("positions-rounded-down", {"predict-positions": variant(
            positions, "-(-height // s) * -(-width // s)", "(height // s) * (width // s)")},
            loses=["anchor-predict"]),
        # One anchor per position.
        Mistake("anchors-without-the-9", {"count-anchors": variant(
            anchors, '"anchors": per_position * positions', '"anchors": positions')},
            loses=["anchor-count"]),
        # P2 counted as a RetinaNet level.
        Mistake("anchors-with-p2", {"count-anchors": variant(
            anchors, 'for lv in ("P3", "P4", "P5", "P6", "P7")',
            'for lv in ("C2", "P3", "P4", "P5", "P6", "P7")')}, loses=["anchor-count"]),
        # The count delegated to torchvision's generator through fpnlab.
        Mistake("anchors-from-torchvision", {"count-anchors": variant(
            anchors, "    s = stage_shapes(height, width, config)\n",
            "    from fpnlab.levels import retinanet_anchors\n"
            "    retinanet_anchors(height, width, config)\n"
            "    s = stage_shapes(height, width, config)\n")}, loses=["anchor-count"]),
        # The level rule without its clamp: tiny and huge objects get levels that do not exist.
        Mistake("level-rule-without-clamp", {"fpn-level": variant(
            rule, "return max(k_min, min(k_max, k))", "return k")}, loses=["level-rule"]),
    ])
