"""fpnlab.config: maskrcnn-benchmark's defaults, attribute access, clone, merge_from_list."""
import pytest

from fpnlab.config import CfgNode, ConfigError, default_cfg, to_shapes_config
from fpnlab.reference import reference, reference_image_size, reference_shapes
from fpnlab.shapes import stage_shapes


def test_defaults_are_the_trace_configuration():
    cfg = default_cfg()
    ref = reference().config
    assert cfg.MODEL.RESNETS.RES2_OUT_CHANNELS == ref["in_channels_stage2"]
    assert cfg.MODEL.RESNETS.BACKBONE_OUT_CHANNELS == ref["out_channels"]
    assert cfg.MODEL.RETINANET.USE_C5 is True
    assert cfg.MODEL.RESNETS.STRIDE_IN_1X1 is True
    assert cfg.MODEL.BACKBONE.FREEZE_CONV_BODY_AT == 2
    assert (cfg.MODEL.FPN.USE_GN, cfg.MODEL.FPN.USE_RELU) == (False, False)
    assert cfg.DATALOADER.SIZE_DIVISIBILITY == 32
    assert cfg.INPUT.TO_BGR255 is True
    assert cfg.INPUT.PIXEL_STD == [1.0, 1.0, 1.0]
    # The resize settings reproduce the trace's resized image.
    assert to_shapes_config(cfg).min_size == cfg.INPUT.MIN_SIZE_TEST
    assert stage_shapes(*reference_image_size(), to_shapes_config(cfg)) == reference_shapes()


def test_pixel_mean_matches_the_oracle_preprocessing():
    from fpnlab.oracle import PIXEL_MEAN
    assert tuple(default_cfg().INPUT.PIXEL_MEAN) == PIXEL_MEAN


def test_clone_is_deep_and_independent():
    cfg = default_cfg()
    other = cfg.clone()
    other.merge_from_list(["MODEL.RESNETS.BACKBONE_OUT_CHANNELS", 256, "INPUT.PIXEL_MEAN", [0, 0, 0]])
    assert other.MODEL.RESNETS.BACKBONE_OUT_CHANNELS == 256
    assert cfg.MODEL.RESNETS.BACKBONE_OUT_CHANNELS == 1024
    assert cfg.INPUT.PIXEL_MEAN[0] == pytest.approx(102.9801)
    assert isinstance(other.MODEL, CfgNode) and other.MODEL is not cfg.MODEL


def test_merge_from_list_reads_literals_from_strings():
    cfg = default_cfg().merge_from_list(["MODEL.RETINANET.USE_C5", "False",
                                         "INPUT.MIN_SIZE_TEST", "800",
                                         "INPUT.PIXEL_STD", "[57.4, 57.1, 58.4]"])
    assert cfg.MODEL.RETINANET.USE_C5 is False
    assert cfg.INPUT.MIN_SIZE_TEST == 800
    assert cfg.INPUT.PIXEL_STD == [57.4, 57.1, 58.4]


def test_unknown_key_names_the_key_and_the_closest_one():
    cfg = default_cfg()
    with pytest.raises(ConfigError, match=r"MODEL\.FPN\.USE_GNN.*did you mean MODEL\.FPN\.USE_GN"):
        cfg.merge_from_list(["MODEL.FPN.USE_GNN", True])
    with pytest.raises(ConfigError, match=r"unknown config key MODEL\.RESNET\.STRIDE_IN_1X1"):
        cfg.merge_from_list(["MODEL.RESNET.STRIDE_IN_1X1", False])
    with pytest.raises(AttributeError, match=r"MODEL\.RESNETS\.OUT_CHANNELS"):
        cfg.MODEL.RESNETS.OUT_CHANNELS
    with pytest.raises(ConfigError, match="unknown config key INPUT.MIN_SIZE"):
        cfg.INPUT.MIN_SIZE = 3


def test_wrong_types_and_odd_lists_are_refused_without_partial_changes():
    cfg = default_cfg()
    with pytest.raises(ConfigError, match=r"BACKBONE_OUT_CHANNELS must be a int.*got 'wide'"):
        cfg.merge_from_list(["INPUT.MIN_SIZE_TEST", 600,
                             "MODEL.RESNETS.BACKBONE_OUT_CHANNELS", "wide"])
    assert cfg.INPUT.MIN_SIZE_TEST == 480, "a failed merge changed an earlier key"
    with pytest.raises(ConfigError, match="KEY, VALUE pairs"):
        cfg.merge_from_list(["INPUT.MIN_SIZE_TEST"])
    with pytest.raises(ConfigError, match="bool"):
        cfg.merge_from_list(["MODEL.FPN.USE_GN", 1])
    with pytest.raises(ConfigError, match="length 3"):
        cfg.merge_from_list(["INPUT.PIXEL_MEAN", [1, 2]])
    with pytest.raises(ConfigError, match="group of keys"):
        cfg.merge_from_list(["MODEL.FPN", 3])


def test_attribute_assignment_and_freeze():
    cfg = default_cfg()
    cfg.MODEL.RESNETS.STRIDE_IN_1X1 = False
    assert cfg["MODEL"]["RESNETS"]["STRIDE_IN_1X1"] is False
    cfg.freeze()
    with pytest.raises(AttributeError, match="frozen"):
        cfg.MODEL.FPN.USE_GN = True
    assert cfg.clone().is_frozen() is False


@pytest.mark.parametrize("use_c5, c2, out, p6_in", [(True, 256, 1024, 2048), (False, 256, 256, 256),
                                                      (True, 64, 128, 512)])
def test_to_shapes_config_follows_the_p6p7_rule(use_c5, c2, out, p6_in):
    cfg = default_cfg().merge_from_list(["MODEL.RETINANET.USE_C5", use_c5,
                                         "MODEL.RESNETS.RES2_OUT_CHANNELS", c2,
                                         "MODEL.RESNETS.BACKBONE_OUT_CHANNELS", out,
                                         "DATALOADER.SIZE_DIVISIBILITY", 64])
    sc = to_shapes_config(cfg)
    assert sc.p6_in_channels == p6_in
    assert (sc.in_channels_stage2, sc.out_channels, sc.size_divisible) == (c2, out, 64)
    assert stage_shapes(301, 517, sc)["P7"][1] == out


def test_str_lists_every_key():
    text = str(default_cfg())
    assert "BACKBONE_OUT_CHANNELS: 1024" in text and "SIZE_DIVISIBILITY: 32" in text
