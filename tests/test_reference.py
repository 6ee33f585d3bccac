"""The reference trace, read as data, and what it says about the configuration."""
import pytest

from fpnlab.reference import excerpt, parse, reference, reference_shapes, trace_text
from fpnlab.shapes import INTERNALS, STAGES, stage_shapes


def test_every_canonical_stage_is_read_from_the_file():
    shapes = reference_shapes()
    assert list(shapes) == list(STAGES)
    for stage, shape in shapes.items():
        assert all(isinstance(d, int) and d > 0 for d in shape), stage
    # The file names each of these shapes itself (no number is typed in this test).
    text = trace_text()
    for stage in STAGES[2:]:
        assert ", ".join(map(str, shapes[stage])) in text, stage


def test_internals_and_returned_tuple_agree_with_the_levels():
    ref = reference()
    assert set(ref.internals) == set(INTERNALS)
    assert ref.results == tuple(ref.shapes[k] for k in ("P3", "P4", "P5", "P6", "P7"))
    # the merged maps equal the laterals they were added to
    for k in (3, 2):
        assert ref.internals[f"eltwise_{k}"] == ref.internals[f"fpn_inner{k}_lateral"]
        assert ref.internals[f"fpn_inner{k}_upsample"] == ref.internals[f"fpn_inner{k}_lateral"]


def test_configuration_and_modules_from_the_trace():
    ref = reference()
    assert ref.config["in_channels_list"][0] == 0
    assert ref.config["in_channels_list"][1:] == [ref.config["in_channels_stage2"] * 2 ** i
                                                  for i in (1, 2, 3)]
    assert ref.config["use_p5"] is False
    assert ref.config["in_channels_p6p7"] != ref.config["out_channels"]
    assert set(ref.modules) == {"fpn_inner2", "fpn_inner3", "fpn_inner4", "fpn_layer2",
                                "fpn_layer3", "fpn_layer4", "p6", "p7"}
    assert ref.modules["p6"].in_channels == ref.config["in_channels_p6p7"]
    assert ref.modules["p6"].stride == 2 and ref.modules["p7"].stride == 2
    for k in (2, 3, 4):
        assert ref.modules[f"fpn_inner{k}"].kernel_size == 1
        assert ref.modules[f"fpn_layer{k}"].padding == 1


def test_engine_reproduces_every_shape_of_the_trace():
    ref = reference()
    _, h, w = ref.shapes["image"]
    assert stage_shapes(h, w, internals=True) == {**ref.shapes, **ref.internals}


def test_a_truncated_trace_is_refused_with_the_missing_stages_named():
    text = "\n".join(line for line in trace_text().splitlines() if "p7.shape" not in line)
    with pytest.raises(ValueError, match="P7"):
        parse(text)


def test_excerpt_quotes_a_part_of_the_trace():
    part = excerpt("LastLevelP6P7.forward", "returns [p6, p7]")
    assert part.splitlines()[0].strip().startswith("LastLevelP6P7.forward")
    assert "p7 = self.p7(F.relu(p6))" in part
