"""Stage 9 (the detector) grades both ways: full marks, zero, and exactly the points of each mistake.

Nothing downloads: the graded cells use torchvision's model built on the meta device and local
random weights, and the cell that would fetch the COCO file is skipped while grading.
"""
import pytest

from conftest import Mistake, grade_both_ways, variant
from conftest import answer as _answer

ASSIGNMENT = "09-detector"

DELEGATED = {
    "settings": '''
def retinanet_settings():
    import fpnlab.detector
    return fpnlab.detector.weights_settings()
''',
    "map": '''
def map_state_dict(state):
    import fpnlab.detector
    return fpnlab.detector.split_state_dict(state)
''',
    # predicting by running torchvision's model (on the meta device) is running, not predicting
    "predict": '''
def predict_pyramid(height, width):
    import torch
    from torchvision.models.detection import retinanet_resnet50_fpn
    with torch.device("meta"):
        model = retinanet_resnet50_fpn(weights=None, weights_backbone=None)
        out = model.backbone(torch.empty(1, 3, height, width))
    return {level: tuple(t.shape) for level, t in zip(("P3", "P4", "P5", "P6", "P7"), out.values())}
''',
    "anchors": '''
def count_batch_anchors(height, width):
    import fpnlab.shapes
    shapes = fpnlab.shapes.stage_shapes(height, width)
    return 9 * sum(s[2] * s[3] for k, s in shapes.items() if k.startswith("P"))
''',
}


def answer(course, grade_id):
    return _answer(course, ASSIGNMENT, grade_id)


@pytest.mark.slow
def test_detector_grades_both_ways(course):
    settings, mapping = answer(course, "settings"), answer(course, "map")
    predict, anchors = answer(course, "predict"), answer(course, "anchors")
    grade_both_ways(course, ASSIGNMENT, [
        # The reference trace's 1024 channels, for the settings and the prediction: the weights'
        # shapes say 256 (the settings' shape cell), and so does every level (the prediction).
        Mistake("trace-1024-channels", {
            "settings": variant(settings, '"out_channels": 256', '"out_channels": 1024'),
            "predict": variant(predict, "(1, 256, h, w)", "(1, 1024, h, w)")},
            loses=["settings-shapes", "predict-pyramid"]),
        # maskrcnn-benchmark's default STRIDE_IN_1X1: every shape the same, the values not.
        Mistake("stride-in-1x1", {"settings": variant(
            settings, '"stride_in_1x1": False', '"stride_in_1x1": True')},
            loses=["settings-values"]),
        # torchvision's FrozenBatchNorm2d default (or what weights=None shows): not these weights'.
        Mistake("eps-1e-5", {"settings": variant(
            settings, '"frozen_bn_eps": 0.0', '"frozen_bn_eps": 1e-5')},
            loses=["settings-values"]),
        # inner_blocks.0 -> fpn_inner3: the FPN's blocks numbered one level off.
        Mistake("fpn-index-off-by-one", {"map": variant(mapping, "int(index) + 2", "int(index) + 3")},
                loses=["map-names", "map-values"]),
        # num_batches_tracked kept: the COCO file has none (visible tests pass), a checkpoint
        # saved with nn.BatchNorm2d has them (hidden).
        Mistake("num-batches-tracked-kept", {"map": variant(
            mapping, '        if key.endswith("num_batches_tracked"):\n            continue\n', "")},
            loses=["map-names"]),
        # Rounding down (right for the photo's 480 x 576, wrong for odd sizes) and counting
        # positions, not anchors.
        Mistake("floor-and-positions", {
            "predict": variant(predict, "return (n - 1) // 2 + 1", "return n // 2"),
            "anchors": variant(anchors, "return total * 3 * 3", "return total")},
            loses=["predict-pyramid", "predict-anchors"]),
        # The ready-made answers: the course's settings and map, running torchvision's model,
        # the shape engine.
        Mistake("delegation", DELEGATED, loses=["settings-shapes", "settings-values", "map-names",
                                                "map-values", "predict-pyramid",
                                                "predict-anchors"]),
    ])
