"""Stage 6 (the whole backbone) grades both ways: full marks, zero, and exactly each mistake's points."""
import pytest

from conftest import Mistake, grade_both_ways, variant
from conftest import answer as _answer

ASSIGNMENT = "06-backbone"


def answer(course, grade_id="builder"):
    return _answer(course, ASSIGNMENT, grade_id)


@pytest.mark.slow
def test_builder_grades_both_ways(course):
    src = answer(course)
    predict = answer(course, "predict-levels")
    grade_both_ways(course, ASSIGNMENT, [
        # Predict, then run: the levels of the resized image, as if the body saw it unpadded.
        Mistake("predict-unpadded", {"predict-levels": variant(
            predict, "    if divisible:\n", "    if False:\n")}, loses=["predict-levels-check"]),
        # Predict, then run: the sides halved rounding down (PyTorch's floor where the convs round up).
        Mistake("predict-floor", {"predict-levels": variant(
            predict, "-(-height // 2 ** k), -(-width // 2 ** k)", "height // 2 ** k, width // 2 ** k")},
            loses=["predict-levels-check"]),
        # Predict, then run: the reference's 1024 typed in (the hidden configurations change it).
        Mistake("predict-typed-channels", {"predict-levels": variant(
            predict, "channels = cfg.MODEL.RESNETS.BACKBONE_OUT_CHANNELS", "channels = 1024")},
            loses=["predict-levels-check"]),
        # The prediction asks the shape engine instead of doing the arithmetic.
        Mistake("predict-engine", {"predict-levels": variant(
            predict, "    divisible = cfg.DATALOADER.SIZE_DIVISIBILITY\n",
            "    from fpnlab.shapes import stage_shapes\n    stage_shapes(height, width)\n"
            "    divisible = cfg.DATALOADER.SIZE_DIVISIBILITY\n")}, loses=["predict-levels-check"]),
        # The yaml files' 256 typed in: wrong against the reference's 1024 and every hidden config.
        Mistake("out-channels-256", {"builder": variant(
            src, "out_channels = cfg.MODEL.RESNETS.BACKBONE_OUT_CHANNELS", "out_channels = 256")},
            loses=["builder-wiring", "builder-shapes", "builder-values"]),
        # P6 sized for P5 although USE_C5: P6 then reads P5, every shape is the same, the weights
        # (2048 -> 1024 in the reference) are not.
        Mistake("p6p7-in-channels-rule", {"builder": variant(
            src, "in_channels_stage2 * 8 if cfg.MODEL.RETINANET.USE_C5 else out_channels",
            "out_channels")}, loses=["builder-wiring", "builder-values"]),
        # The Sequential without its out_channels attribute: the heads could not size themselves.
        Mistake("no-out-channels-attribute", {"builder": variant(
            src, "    model.out_channels = out_channels\n", "")}, loses=["builder-wiring"]),
        # Children left unnamed (0 and 1): the state-dict keys and the tracer's stages are lost.
        Mistake("unnamed-children", {"builder": variant(
            src, 'nn.Sequential(OrderedDict([("body", body), ("fpn", fpn)]))', "nn.Sequential(body, fpn)")},
            loses=["builder-wiring", "builder-shapes", "builder-values"]),
    ])
