"""Stage 1 (preprocessing) grades both ways: full marks for the solution, 0 for the blank
release, and each typical mistake loses exactly the points of the test cells it breaks."""
import pytest

from conftest import Mistake, grade_both_ways

ROUNDING = '''
def resized_size(height, width, min_size=480, max_size=1333):
    short, long = float(min(height, width)), float(max(height, width))
    size = min_size
    if long / short * size > max_size:
        size = int(round(max_size * short / long))
    if (width <= height and width == size) or (height <= width and height == size):
        return (height, width)
    if width < height:
        return (round(size * height / width), size)   # rounds instead of truncating
    return (size, round(size * width / height))
'''

DELEGATES = '''
import fpnlab.shapes
def resized_size(height, width, min_size=480, max_size=1333):
    return fpnlab.shapes.resized_size(height, width, min_size, max_size)
'''

RGB = '''
import torch
import torchvision.transforms.functional as TF
def to_bgr255(image):
    t = TF.to_tensor(image) * 255                      # channels left in RGB order
    return t - torch.tensor(PIXEL_MEAN).view(3, 1, 1)
'''

# helpers of the learner's own under the shape engine's names (pad_to, conv_out, stage_shapes),
# wrong ones: the judge reads the engine's, so the prediction built on them loses its points
OWN_ENGINE_NAMES = '''
def pad_to(n, d):                                      # rounds down
    return n // d * d if d else n
def conv_out(n, k, s=1, p=0):
    return (n + 2 * p - k) // s
def stage_shapes(*args, **kwargs):
    raise RuntimeError("not the engine")
def predict_shapes(height, width, min_size=480, max_size=1333, size_divisible=32):
    h, w = resized_size(height, width, min_size, max_size)
    return {"resized": (3, h, w), "padded": (1, 3, pad_to(h, size_divisible), pad_to(w, size_divisible))}
'''

CENTERED = '''
def to_image_list(tensors, size_divisible=32):
    max_h = max(int(t.shape[-2]) for t in tensors)
    max_w = max(int(t.shape[-1]) for t in tensors)
    if size_divisible > 0:
        max_h = int(math.ceil(max_h / size_divisible) * size_divisible)
        max_w = int(math.ceil(max_w / size_divisible) * size_divisible)
    batch = tensors[0].new_zeros((len(tensors), tensors[0].shape[0], max_h, max_w))
    for img, slot in zip(tensors, batch):
        top, left = (max_h - img.shape[-2]) // 2, (max_w - img.shape[-1]) // 2   # centred
        slot[:, top:top + img.shape[-2], left:left + img.shape[-1]].copy_(img)
    return ImageList(batch, [(int(t.shape[-2]), int(t.shape[-1])) for t in tensors])
'''

PAD_TOO_FAR = '''
def predict_shapes(height, width, min_size=480, max_size=1333, size_divisible=32):
    h, w = resized_size(height, width, min_size, max_size)
    ph, pw = h, w
    if size_divisible > 0:
        ph = (h // size_divisible + 1) * size_divisible     # one multiple too far when h is one
        pw = (w // size_divisible + 1) * size_divisible
    return {"resized": (3, h, w), "padded": (1, 3, ph, pw)}
'''

DIVIDES_BY_ZERO = '''
import math
def predict_shapes(height, width, min_size=480, max_size=1333, size_divisible=32):
    h, w = resized_size(height, width, min_size, max_size)
    d = size_divisible                                  # 0 (no padding) is not special-cased
    return {"resized": (3, h, w), "padded": (1, 3, math.ceil(h / d) * d, math.ceil(w / d) * d)}
'''

PREDICT_ENGINE = '''
from fpnlab.shapes import REFERENCE, stage_shapes
def predict_shapes(height, width, min_size=480, max_size=1333, size_divisible=32):
    s = stage_shapes(height, width, REFERENCE.with_(min_size=min_size, max_size=max_size,
                                                    size_divisible=size_divisible))
    return {"resized": s["resized"], "padded": s["padded"]}
'''

WRONG_DEVICE = '''
import torch
def to_image_list(tensors, size_divisible=32):
    max_h = max(int(t.shape[-2]) for t in tensors)
    max_w = max(int(t.shape[-1]) for t in tensors)
    if size_divisible > 0:
        max_h = int(math.ceil(max_h / size_divisible) * size_divisible)
        max_w = int(math.ceil(max_w / size_divisible) * size_divisible)
    batch = torch.zeros((len(tensors), tensors[0].shape[0], max_h, max_w))   # default device
    for img, slot in zip(tensors, batch):
        slot[:, :img.shape[-2], :img.shape[-1]].copy_(img)
    return ImageList(batch, [(int(t.shape[-2]), int(t.shape[-1])) for t in tensors])
'''

BATCH_IMAGES = '''
from torchvision.models.detection.transform import GeneralizedRCNNTransform
def to_image_list(tensors, size_divisible=32):
    t = GeneralizedRCNNTransform(480, 1333, [0.0, 0.0, 0.0], [1.0, 1.0, 1.0],
                                 size_divisible=size_divisible)
    batch = t.batch_images(list(tensors), size_divisible=size_divisible)
    return ImageList(batch, [(int(x.shape[-2]), int(x.shape[-1])) for x in tensors])
'''

ONE_CONDITION = '''
import math
def topdown_fits(n):
    return 2 * math.ceil(n / 32) == math.ceil(n / 16)     # forgets the P3 addition
'''


@pytest.mark.slow
def test_lesson_01_grades_both_ways(course):
    grade_both_ways(course, "01-preprocessing", [
        # predict_shapes calls the learner's resized_size: a resize mistake shows in both
        Mistake("rounding", {"resized-size": ROUNDING}, loses=["resize-sizes", "predict-sizes"]),
        Mistake("delegates", {"resized-size": DELEGATES},
                loses=["resize-trace", "resize-sizes", "predict-sizes"]),
        Mistake("rgb-and-own-engine-names", {"to-bgr255": RGB, "predict-shapes": OWN_ENGINE_NAMES},
                loses=["bgr-values", "predict-sizes"]),
        Mistake("pad-too-far", {"predict-shapes": PAD_TOO_FAR}, loses=["predict-sizes"]),
        Mistake("divides-by-zero", {"predict-shapes": DIVIDES_BY_ZERO}, loses=["predict-sizes"]),
        Mistake("predict-engine", {"predict-shapes": PREDICT_ENGINE}, loses=["predict-sizes"]),
        Mistake("centered", {"to-image-list": CENTERED}, loses=["pad-values"]),
        Mistake("wrong-device", {"to-image-list": WRONG_DEVICE}, loses=["pad-device"]),
        Mistake("batch-images", {"to-image-list": BATCH_IMAGES},
                loses=["pad-shape", "pad-values", "pad-device"]),
        Mistake("one-condition", {"topdown-fits": ONE_CONDITION}, loses=["fits"]),
    ])


def test_check_size_accepts_ints_and_names_the_truncation():
    from fpnlab.checks import CheckError, check_size
    from fpnlab.reference import reference_shapes

    h, w = reference_shapes()["resized"][1:]
    check_size((h, w), "resized", (h, w))
    with pytest.raises(CheckError, match="truncated"):
        check_size((h, w + 1), "resized", (h, w))
    for fake in ((float(h), float(w)), [h], f"{h}x{w}", None):
        with pytest.raises(CheckError, match="Python ints"):
            check_size(fake, "resized", (h, w))
