"""fpnlab.levels, lesson 08's oracles: the probes agree with the other probe and with the
arithmetic they stand in for, the counts with fpnlab.cost and the shape engine, the anchors with
torchvision's generator, and the drawings are plain figures."""
from __future__ import annotations

import math
import random

import pytest
from matplotlib.figure import Figure

from fpnlab import cost, levels, receptive
from fpnlab.reference import reference_shapes
from fpnlab.shapes import REFERENCE, stage_shapes

IMAGE = reference_shapes()["image"][1:]         # the trace's photo (H, W)
PADDED = reference_shapes()["padded"][2:]       # the trace's padded batch (H, W)


def recurrence(layers):
    """The textbook recurrence, here only to cross-check the measurement."""
    rf, step, out = 1, 1, []
    for k, s in layers:
        rf += (k - 1) * step
        step *= s
        out.append((rf, step))
    return out


def test_probe_fields_measures_every_prefix():
    rng = random.Random(0)
    for _ in range(6):
        layers = [(rng.choice((1, 2, 3, 5, 7)), rng.choice((1, 1, 2, 3))) for _ in range(rng.randint(1, 7))]
        assert levels.probe_fields(layers) == recurrence(layers), layers


@pytest.mark.parametrize("stride_in_1x1", [True, False])
def test_probe_levels_agrees_with_the_body_probe_and_the_spec(stride_in_1x1):
    fields = levels.probe_levels(stride_in_1x1)
    body = receptive.probe_body(stride_in_1x1)
    assert fields["C1"] == body["stem"]
    for k in (2, 3, 4, 5):
        assert fields[f"C{k}"] == body[f"C{k}"]
    other = receptive.probe_body(not stride_in_1x1)["C5"][0]     # SPEC section 2: more with it in the 1x1
    assert (fields["C5"][0] > other) == stride_in_1x1
    assert {s: fields[s][1] for s in levels.STAGES} == {s: levels.STRIDES[s] for s in levels.STAGES}
    for k in (3, 4, 5):                   # lateral path: + 1x1 (nothing) + 3x3 at the level's step
        rf, step = fields[f"C{k}"]
        assert fields[f"P{k}"] == (rf + 2 * step, step)
    c5, p5 = fields["C5"], fields["P5"]
    assert fields["P6"] == (c5[0] + 2 * 32, 64)
    assert fields["P7"] == (fields["P6"][0] + 2 * 64, 128)
    assert levels.probe_levels(stride_in_1x1, "P5")["P6"] == (p5[0] + 2 * 32, 64)


def test_top_down_path_sees_at_least_the_lateral_path_and_as_much_as_c5():
    lateral = levels.probe_levels()
    full = levels.probe_levels(top_down=True)
    for s in levels.STAGES:
        assert full[s][0] >= lateral[s][0] and full[s][1] == lateral[s][1]
    for s in ("P3", "P4"):
        assert full[s][0] > lateral[s][0]
        assert full[s][0] >= lateral["C5"][0]
    for s in ("C1", "C2", "C3", "C4", "C5", "P5", "P6", "P7"):
        assert full[s] == lateral[s]


def test_probe_box_is_the_centred_field_cut_by_the_input():
    h, w = PADDED
    rf, step = levels.probe_levels()["P3"]
    row, col = 30, 36
    half = (rf - 1) // 2
    assert levels.probe_box("P3", row, col, h, w, top_down=False) == (
        row * step - half, row * step + half, col * step - half, col * step + half)
    top, bottom, left, right = levels.probe_box("P7", 0, 0, h, w)
    assert (top, left) == (0, 0) and bottom < h and right < w


@pytest.mark.parametrize("hw", [PADDED, (800, 1216), (96, 160), (352, 32)])
def test_level_sizes_are_the_engines(hw):
    cfg = REFERENCE.with_(min_size=min(hw), max_size=10 ** 5)
    s = stage_shapes(*hw, cfg)
    sizes = levels.level_sizes(*hw)
    assert sizes["C1"] == s["stem"][-2:] and sizes["P2"] == s["C2"][-2:]
    for stage in ("C2", "C3", "C4", "C5", "P3", "P4", "P5", "P6", "P7"):
        assert sizes[stage] == s[stage][-2:], stage


def test_measured_costs_match_the_spec_and_fpnlab_cost():
    c = levels.measured_costs(*PADDED)
    import torch
    from torchvision.models import resnet50

    body = resnet50(weights=None)          # the body's conv weights (FrozenBN holds no parameters)
    convs = sum(m.weight.numel() for m in body.modules() if isinstance(m, torch.nn.Conv2d))
    assert sum(c[s]["params"] for s in levels.C_STAGES) == convs
    assert 20e9 < sum(c[s]["macs"] for s in levels.C_STAGES) < 22e9         # SPEC: "about 21 G"
    out = stage_shapes(*IMAGE)["P3"][1]
    assert {s: c[s] for s in levels.P_STAGES} == cost.fpn_level_costs(*PADDED, out)
    shapes = stage_shapes(*IMAGE)
    for stage, name in zip(levels.C_STAGES, ("stem", "C2", "C3", "C4", "C5")):
        assert c[stage]["bytes"] == math.prod(shapes[name]) * 4
    assert round(sum(c[s]["macs"] for s in levels.P_STAGES) / 1e9) == 59
    narrow = levels.measured_costs(*PADDED, 256)
    assert round(sum(narrow[s]["macs"] for s in levels.P_STAGES) / 1e9, 1) == 4.7
    # the stride in the 3x3 runs that conv at the full resolution: more multiply-adds
    assert levels.measured_costs(*PADDED, stride_in_1x1=False)["C3"]["macs"] > c["C3"]["macs"]


def test_retinanet_anchors_counts_and_layout():
    anchors = levels.retinanet_anchors(*IMAGE, with_p2=True)
    shapes = stage_shapes(*IMAGE)
    for lv in ("P3", "P4", "P5", "P6", "P7"):
        assert anchors[lv].shape == (9 * shapes[lv][-2] * shapes[lv][-1], 4)
    assert anchors["P2"].shape[0] == 9 * shapes["C2"][-2] * shapes["C2"][-1]
    rest = [anchors[lv] for lv in levels.P_STAGES]
    positions = sum(shapes[lv][-2] * shapes[lv][-1] for lv in levels.P_STAGES)   # SPEC section 2
    assert sum(a.shape[0] for a in rest) == 9 * positions                         # 9 anchors a position
    assert list(levels.retinanet_anchors(*IMAGE)) == list(levels.P_STAGES)
    gh, gw = levels.level_sizes(*PADDED)["P6"]
    box = levels.anchors_at(anchors["P6"], (gh, gw), 3, 4)
    centre_x = (box[:, 0] + box[:, 2]) / 2
    centre_y = (box[:, 1] + box[:, 3]) / 2
    assert box.shape == (9, 4)
    assert centre_x.sub(4 * (PADDED[1] // gw)).abs().max() <= 0.5   # torchvision: pixel col*stride
    assert centre_y.sub(3 * (PADDED[0] // gh)).abs().max() <= 0.5
    sides = ((box[:, 2] - box[:, 0]) * (box[:, 3] - box[:, 1])).sqrt()
    assert 250 <= float(sides.min()) and float(sides.max()) <= 410              # 256 .. 406


def test_mapped_level_is_fpn_eqn_1_clamped():
    for w, h in ((224, 224), (112, 112), (600, 400), (300, 300), (897, 897), (161, 200)):
        raw = math.floor(4 + math.log2(math.sqrt(w * h) / 224))
        assert levels.mapped_level(w, h, -100, 100) == raw
        assert levels.mapped_level(w, h) == max(3, min(7, raw))
    assert levels.mapped_level(20, 10) == 3 and levels.mapped_level(20, 10, 2, 5) == 2
    assert levels.mapped_level(5000, 5000) == 7 and levels.mapped_level(5000, 5000, 2, 5) == 5


def test_drawings_are_plain_figures_and_show_as_png():
    import matplotlib.pyplot as plt

    before = plt.get_fignums()
    photo, resized = levels.padded_photo()
    assert photo.shape == (*PADDED, 3) and resized == reference_shapes()["resized"][1:]
    assert 0.0 <= photo.min() and photo.max() <= 1.0
    rf, step = levels.probe_levels()["P5"]
    fig = levels.draw_receptive_field("P5", 7, 9, rf, step,
                                      box=levels.probe_box("P5", 7, 9, *PADDED),
                                      photo=photo, resized_hw=resized)
    anchors = levels.retinanet_anchors(*IMAGE)
    sizes = levels.level_sizes(*PADDED)
    middle = {lv: levels.anchors_at(anchors[lv], sizes[lv], sizes[lv][0] // 2, sizes[lv][1] // 2)
              for lv in levels.P_STAGES}
    centres = {lv: (0, 0) for lv in levels.P_STAGES}
    figs = [fig, levels.draw_anchors(middle, centres, photo=photo, resized_hw=resized),
            levels.draw_objects([dict(box=(10, 10, 60, 50), level="P3", anchors=middle["P3"]),
                                 dict(box=(100, 100, 300, 300), level="P4")],
                                photo=photo, resized_hw=resized),
            levels.draw_costs({"a": levels.measured_costs(*PADDED),
                               "b": levels.measured_costs(*PADDED, 256)})]
    for f in figs:
        assert isinstance(f, Figure)
        png = levels.show(f).data
        assert png.startswith(b"\x89PNG\r\n\x1a\n")
    assert [a.get_title() for a in figs[1].axes if a.get_visible()][0].startswith("P3: 9 anchors")
    assert plt.get_fignums() == before
