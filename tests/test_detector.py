"""fpnlab.detector: torchvision's COCO RetinaNet weights through torchvision's own loader, mapped
into maskrcnn-benchmark names, a detector around the course's backbone.

Nothing here downloads: every test makes torch.hub's download raise URLError, and the checkpoint
is built locally in torchvision's format (the real key names and shapes, random values) at the
exact path torchvision's loader looks for.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from urllib.error import URLError
from urllib.parse import urlparse

import pytest
import torch
import torch.hub
from torchvision.models.detection import retinanet_resnet50_fpn
from torchvision.ops import FrozenBatchNorm2d

from fpnlab import detector as D
from fpnlab.oracle import to_maskrcnn_key

ROOT = Path(__file__).resolve().parent.parent
MASKRCNN_NAME = re.compile(
    r"^(body\.stem\.(conv1\.weight|bn1\.(weight|bias|running_mean|running_var))"
    r"|body\.layer[1-4]\.\d+\.(conv[123]\.weight|bn[123]\.\w+|downsample\.[01]\.\w+)"
    r"|fpn\.fpn_(inner|layer)[234]\.(weight|bias)"
    r"|fpn\.top_blocks\.p[67]\.(weight|bias))$")


@pytest.fixture(autouse=True)
def no_download(monkeypatch):
    """Every test: torch.hub cannot download (URLError), and records each attempt."""
    attempts = []

    def refuse(url, dst, *args, **kwargs):
        attempts.append(url)
        raise URLError("downloads are switched off in the tests")

    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse)
    monkeypatch.delenv("FPNLAB_OFFLINE", raising=False)
    return attempts


@pytest.fixture
def torch_home(tmp_path, monkeypatch):
    """An empty TORCH_HOME: torch.hub.get_dir() is <tmp>/hub, as torch computes it."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.delenv("TORCH_HUB", raising=False)
    monkeypatch.setattr(torch.hub, "_hub_dir", None)
    return tmp_path


def cache_file(torch_home: Path) -> Path:
    """Where torchvision's loader looks: <TORCH_HOME>/hub/checkpoints/<the url's file name>."""
    return torch_home / "hub" / "checkpoints" / os.path.basename(urlparse(D.WEIGHTS.url).path)


def local_checkpoint(seed: int = 0):
    """torchvision's RetinaNet state dict with its real key names and shapes and random values:
    the builder's random init (no pretrained anything), frozen-BN statistics randomised so that
    a swapped buffer shows. It keeps num_batches_tracked (nn.BatchNorm2d without weights):
    torchvision's FrozenBatchNorm2d drops those on load, the name map leaves them out."""
    torch.manual_seed(seed)
    state = retinanet_resnet50_fpn(weights=None, weights_backbone=None).state_dict()
    gen = torch.Generator().manual_seed(seed)
    for key, value in state.items():
        for suffix, lo, hi in ((".running_var", 0.5, 2.0), (".running_mean", -0.1, 0.1)):
            if key.endswith(suffix):
                value.uniform_(lo, hi, generator=gen)
        if re.search(r"\.(bn\d|downsample\.1)\.(weight|bias)$", key):
            value.uniform_(0.5, 1.0, generator=gen)
    return state


@pytest.fixture(scope="module")
def checkpoint():
    return local_checkpoint(0)


@pytest.fixture
def cached(torch_home, checkpoint):
    path = cache_file(torch_home)
    path.parent.mkdir(parents=True)
    torch.save(checkpoint, path)
    return path


# ----------------------------------------------------------------------------- loading
def test_no_network_one_line_and_none(torch_home, capsys, no_download):
    assert D.load_retinanet_weights() is None
    out = capsys.readouterr()
    assert out.out == f"{D.NO_NETWORK} (URLError)\n", out
    assert "no network: pretrained weights unavailable, continuing with random weights" in out.out
    assert no_download == [D.WEIGHTS.url]          # torchvision's loader did try, once
    assert not cache_file(torch_home).exists()


def test_offline_never_tries(torch_home, capsys, no_download, monkeypatch):
    monkeypatch.setenv("FPNLAB_OFFLINE", "1")
    assert D.load_retinanet_weights() is None
    assert capsys.readouterr().out.startswith(D.NO_NETWORK)
    assert no_download == []


def test_cache_path_is_torchvisions(torch_home):
    assert D.checkpoint_path() == cache_file(torch_home)
    assert Path(torch.hub.get_dir()) == torch_home / "hub"


def test_cached_file_goes_through_torchvisions_loader(cached, checkpoint, capsys, no_download,
                                                      monkeypatch):
    seen = []
    real = torch.hub.load_state_dict_from_url

    def spy(url, *args, **kwargs):
        seen.append(url)
        return real(url, *args, **kwargs)

    import torchvision.models._api as api
    monkeypatch.setattr(api, "load_state_dict_from_url", spy)
    state = D.load_retinanet_weights()
    assert seen == [D.WEIGHTS.url] and no_download == []
    assert capsys.readouterr().out.count("\n") == 1
    assert list(state) == list(checkpoint)
    assert all(torch.equal(state[k], checkpoint[k]) for k in checkpoint)


# ----------------------------------------------------------------------------- settings
def test_settings_are_torchvisions():
    """SPEC: COCO_V1 has the stride in the 3x3, 256 channels, P6 from P5, FrozenBN eps 0."""
    assert D.weights_settings() == {"stride_in_1x1": False, "out_channels": 256,
                                    "p6_from": "P5", "frozen_bn_eps": 0.0}
    model = D.torchvision_model()
    body, fpn = model.backbone.body, model.backbone.fpn
    assert all(isinstance(m, FrozenBatchNorm2d) and m.eps == 0.0
               for m in body.modules() if "BatchNorm" in type(m).__name__)
    assert tuple(body.layer2[0].conv2.stride) == (2, 2) and fpn.extra_blocks.use_P5
    assert tuple(fpn.extra_blocks.p6.weight.shape[:2]) == (256, 256)


def test_cfg_for_the_weights():
    from fpnlab.config import to_shapes_config

    cfg = D.retinanet_cfg()
    assert cfg.MODEL.RESNETS.STRIDE_IN_1X1 is False
    assert cfg.MODEL.RESNETS.BACKBONE_OUT_CHANNELS == 256
    assert cfg.MODEL.RETINANET.USE_C5 is False and cfg.INPUT.TO_BGR255 is False
    shapes = to_shapes_config(cfg)
    assert shapes.use_p5 and shapes.p6_in_channels == 256
    assert cfg.INPUT.PIXEL_MEAN == list(D.torchvision_model().transform.image_mean)


# ----------------------------------------------------------------------------- the name map
def test_every_backbone_key_maps_to_a_maskrcnn_name(checkpoint):
    backbone, head = D.split_state_dict(checkpoint)
    for key in checkpoint:
        name = D.backbone_key(key)
        if key.startswith("backbone.") and not key.endswith("num_batches_tracked"):
            assert name is not None and MASKRCNN_NAME.match(name), (key, name)
            assert name == to_maskrcnn_key(key[len("backbone."):])
        else:
            assert name is None, key
    assert len(backbone) == sum(k.startswith("backbone.") and not k.endswith("num_batches_tracked")
                                for k in checkpoint)
    assert set(head) == {k[len("head."):] for k in checkpoint if k.startswith("head.")}
    assert D.backbone_key("backbone.fpn.inner_blocks.0.0.weight") == "fpn.fpn_inner2.weight"
    assert D.backbone_key("backbone.fpn.layer_blocks.2.0.bias") == "fpn.fpn_layer4.bias"
    assert D.backbone_key("backbone.fpn.extra_blocks.p6.weight") == "fpn.top_blocks.p6.weight"
    assert D.backbone_key("backbone.body.bn1.running_var") == "body.stem.bn1.running_var"


def test_mapped_weights_land_and_compute_torchvisions_pyramid(cached, checkpoint):
    """Through the map into the oracle's backbone (the weights' settings): every key and value
    lands, and P3..P7 equal torchvision's own pretrained retinanet loaded from the cache."""
    from torchvision.models.detection import RetinaNet_ResNet50_FPN_Weights

    backbone_state, _ = D.split_state_dict(checkpoint)
    model = D.oracle_backbone(device="meta")
    D.load_backbone(model, backbone_state)
    mine = model.state_dict()
    for key, value in mine.items():
        assert torch.equal(value, checkpoint["backbone." + key]), key
    assert len(mine) == len(backbone_state)
    theirs = retinanet_resnet50_fpn(weights=RetinaNet_ResNet50_FPN_Weights.COCO_V1).eval()
    assert D.weights_settings(theirs) == D.weights_settings()
    x = torch.randn(2, 3, 96, 128, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want, got = theirs.backbone(x), model(x)
        in_memory = D.torchvision_model(checkpoint).backbone(x)
    assert list(got) == list(want)
    for key in want:
        torch.testing.assert_close(got[key], want[key], rtol=1e-5, atol=1e-5)
        assert torch.equal(in_memory[key], want[key])


def test_learner_style_backbone_loads_strictly(checkpoint):
    """The solutions' own builder (stages 3-6, maskrcnn-benchmark names) with the weights' cfg:
    every tensor loads by name and the pyramid equals torchvision's."""
    backbone_state, _ = D.split_state_dict(checkpoint)
    with torch.device("meta"):
        model = D.learner_backbone(D.retinanet_cfg(), folder=ROOT / "solutions")
    assert set(model.state_dict()) == set(backbone_state)
    D.load_backbone(model, backbone_state)
    x = torch.randn(1, 3, 64, 96, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        got = model(x)
        want = list(D.torchvision_model(checkpoint).backbone(x).values())
    assert isinstance(got, (tuple, list)) and len(got) == 5
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_learner_backbone_names_the_missing_lesson(tmp_path):
    from fpnlab.answers import AnswerError

    with pytest.raises(AnswerError, match="lesson 03-body"):
        D.learner_backbone(D.retinanet_cfg(), folder=tmp_path)


def test_load_backbone_refuses_what_does_not_fit(checkpoint):
    backbone_state, _ = D.split_state_dict(checkpoint)
    torchvision_names = {k[len("backbone."):]: v for k, v in checkpoint.items()
                         if k.startswith("backbone.") and not k.endswith("num_batches_tracked")}
    with pytest.raises(KeyError, match="have no weight.*fit no key"):
        D.load_backbone(D.oracle_backbone(device="meta"), torchvision_names)
    shifted = {re.sub(r"fpn_inner(\d)", lambda m: f"fpn_inner{int(m.group(1)) + 1}", k): v
               for k, v in backbone_state.items()}
    with pytest.raises(KeyError, match="fpn.fpn_inner2"):
        D.load_backbone(D.oracle_backbone(device="meta"), shifted)
    with pytest.raises(ValueError, match="fpn.fpn_inner2.weight"):
        D.load_backbone(D.oracle_backbone({**D.weights_settings(), "out_channels": 1024},
                                          device="meta"), backbone_state)
    with pytest.raises(ValueError, match="top_blocks.p6"):
        D.load_backbone(D.oracle_backbone({**D.weights_settings(), "p6_from": "C5"},
                                          device="meta"), backbone_state)


def test_random_checkpoint_has_the_files_names_and_shapes():
    state = D.random_checkpoint(3)
    skeleton = D.torchvision_model().state_dict()
    assert list(state) == list(skeleton)
    assert all(tuple(state[k].shape) == tuple(v.shape) for k, v in skeleton.items())
    assert not any(k.endswith("num_batches_tracked") for k in state)
    assert all(torch.equal(a, b) for a, b in zip(state.values(), D.random_checkpoint(3).values()))
    var = state["backbone.body.bn1.running_var"]
    assert float(var.min()) >= 0.5 and float(var.max()) <= 2.0


# ----------------------------------------------------------------------------- the detector
def small_image(h=100, w=140):
    from PIL import Image

    gen = torch.Generator().manual_seed(0)
    pixels = (torch.rand(h, w, 3, generator=gen) * 255).to(torch.uint8).numpy()
    return Image.fromarray(pixels)


def test_detection_end_to_end_equals_torchvisions():
    checkpoint = D.random_checkpoint(0)          # a random head: something scores above 0.05
    backbone_state, head_state = D.split_state_dict(checkpoint)
    backbone = D.load_backbone(D.oracle_backbone(device="meta"), backbone_state)
    model = D.attach_head(backbone, checkpoint, min_size=128, max_size=256)
    image = small_image()
    found = D.detect(model, image)
    n = found["boxes"].shape[0]
    assert found["boxes"].shape == (n, 4) and found["boxes"].dtype == torch.float32
    assert found["labels"].shape == (n,) and found["scores"].shape == (n,)
    assert n > 0
    assert float(found["boxes"][:, [0, 2]].max()) <= image.width
    assert float(found["boxes"][:, [1, 3]].max()) <= image.height
    theirs = D.torchvision_model(checkpoint)
    theirs.transform.min_size, theirs.transform.max_size = (128,), 256
    want = D.detect(theirs, image)
    torch.testing.assert_close(found["boxes"], want["boxes"], rtol=1e-4, atol=1e-3)
    assert torch.equal(found["labels"], want["labels"])
    # the head state alone does it too; a tuple-returning backbone is wrapped
    class Tuple(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner, self.out_channels = inner, inner.out_channels

        def forward(self, x):
            return tuple(self.inner(x).values())

    again = D.detect(D.attach_head(Tuple(backbone), head_state, min_size=128, max_size=256), image)
    assert torch.equal(again["labels"], found["labels"])


def test_random_head_finds_nothing_and_still_runs():
    backbone = D.load_backbone(D.oracle_backbone(device="meta"),
                               D.split_state_dict(D.random_checkpoint(0))[0])
    found = D.detect(D.attach_head(backbone, None, min_size=96, max_size=160), small_image())
    assert found["boxes"].shape[1:] == (4,)


def test_batch_input_is_the_trace_batch():
    from fpnlab.images import sample_image
    from fpnlab.reference import reference_shapes
    from fpnlab.shapes import REFERENCE

    batch = D.batch_input(sample_image(), REFERENCE.min_size)
    ref = reference_shapes()
    assert tuple(batch.tensors.shape) == tuple(ref["padded"])
    assert tuple(batch.image_sizes[0]) == tuple(ref["resized"][-2:])


def test_draw_detections_is_a_figure_without_pyplot():
    import matplotlib.pyplot as plt
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle

    before = plt.get_fignums()
    boxes = torch.tensor([[10.0, 10.0, 60.0, 80.0], [5.0, 5.0, 20.0, 20.0]])
    fig = D.draw_detections(small_image(), boxes, torch.tensor([1, 3]), torch.tensor([0.9, 0.2]),
                            threshold=0.5)
    assert isinstance(fig, Figure) and plt.get_fignums() == before
    ax = fig.axes[0]
    assert sum(isinstance(p, Rectangle) for p in ax.patches) == 1
    assert any(t.get_text().startswith(D.CATEGORIES[1]) for t in ax.texts)
    assert D.CATEGORIES[1] == "person"
    empty = D.draw_detections(small_image(), torch.zeros(0, 4), torch.zeros(0), torch.zeros(0))
    assert "no detection" in empty.axes[0].get_title()
