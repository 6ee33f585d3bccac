"""Each diagnostic fires on its mistake and stays silent on the right answer."""
import pytest
import torch

from fpnlab import checks, oracle, shapes
from fpnlab.checks import CheckError
from fpnlab.reference import reference_shapes

REF = reference_shapes()
PHOTO = REF["image"][1:]          # the trace's input photo (H, W)


def fails(fn, *args, **kw) -> CheckError:
    with pytest.raises(CheckError) as e:
        fn(*args, **kw)
    return e.value


def test_right_answers_pass_silently():
    for stage in ("padded", "stem", "C3", "P3", "P7"):
        checks.check_tensor(torch.zeros(REF[stage]), stage, REF[stage])
        assert checks.diagnose(stage, REF[stage], REF[stage]) is None
    checks.check_stage(torch.zeros(REF["C5"]), "C5", *REF["image"][1:])
    x = torch.randn(2, 3)
    checks.check_close(x + 1e-7, x, "P3")


def test_one_pixel_off_points_at_padding():
    bad = REF["C3"][:-1] + (REF["C3"][-1] - 1,)
    e = fails(checks.check_shape, torch.zeros(bad), "C3", REF["C3"])
    assert e.stage == "C3" and e.expected == REF["C3"] and e.actual == bad
    assert "W is off by one at C3" in str(e) and "multiple of 32" in str(e)


def test_resize_off_by_one_names_the_rounding_direction():
    c, h, w = REF["resized"]
    assert "truncated (int()), not rounded" in checks.diagnose("resized", REF["resized"],
                                                               (c, h, w + 1))
    assert "max_size is rounded" in checks.diagnose("resized", REF["resized"], (c, h, w - 1))


def test_a_hidden_tests_label_keeps_its_stages_cause():
    c, h, w = REF["resized"]
    label = f"resized (image {h - 5}x{w + 3}, max_size {w})"
    e = fails(checks.check_size, (h, w + 1), label, (h, w))
    assert e.stage == label and "truncated" in str(e) and "multiple of 32" not in str(e)
    # the stage given apart from the label wins
    e = fails(checks.check_shape, torch.zeros(REF["C3"][:-1] + (REF["C3"][-1] - 1,)),
              "level 2 of your body", REF["C3"], stage="C3")
    assert "W is off by one at C3" in str(e)


def test_an_off_by_one_after_a_padded_input_does_not_blame_the_padding():
    n, c, h, w = REF["stem"]
    smaller = fails(checks.check_shape, torch.zeros(n, c, h - 1, w - 1), "stem", REF["stem"],
                    padded=True)
    larger = fails(checks.check_shape, torch.zeros(n, c, h + 1, w + 1), "stem", REF["stem"],
                   padded=True)
    for e in (smaller, larger):
        assert "padding is not the cause" in str(e) and "multiple of 32 (size" not in str(e)
    assert "+ 1" in str(smaller) and "ceil_mode" in str(larger)
    unpadded = fails(checks.check_shape, torch.zeros(n, c, h - 1, w - 1), "stem", REF["stem"])
    assert "multiple of 32" in str(unpadded)


def test_a_value_mismatch_names_the_known_wrong_variant_it_equals():
    x = torch.rand(1, 2, 4, 4, generator=torch.Generator().manual_seed(0))
    nearest = torch.nn.functional.interpolate(x, scale_factor=2, mode="nearest")
    bilinear = torch.nn.functional.interpolate(x, scale_factor=2, mode="bilinear")
    variants = [("it is bilinear upsampling", bilinear), ("it is x2 of the input", 2 * nearest)]
    e = fails(checks.check_close, bilinear, nearest, "P4", variants=variants)
    assert "bilinear upsampling" in str(e)
    e = fails(checks.check_close, nearest + 1, nearest, "P4", cause="generic", variants=variants)
    assert "generic" in str(e) and "bilinear" not in str(e)
    checks.check_close(nearest, nearest, "P4", variants=variants)


def test_a_prediction_table_names_the_wrong_entry_and_its_cause():
    want = {k: REF[k] for k in ("C3", "C4")}
    checks.check_shape_table({k: tuple(v) for k, v in want.items()}, want, "your prediction")
    off = dict(want, C4=REF["C4"][:-1] + (REF["C4"][-1] - 1,))
    e = fails(checks.check_shape_table, off, want, "your prediction")
    assert "your prediction, C4" in str(e) and "off by one at C4" in str(e)
    e = fails(checks.check_shape_table, {"C3": want["C3"]}, want, "your prediction")
    assert "missing: C4" in str(e)
    checks.check_shape_table(dict(want, C3=list(want["C3"])), want, "p")
    e = fails(checks.check_shape_table, [want["C3"]], want, "p")
    assert "dict" in str(e)


def test_a_forward_error_is_explained():
    conv = torch.nn.Conv2d(REF["C4"][1], 8, 1)
    try:
        conv(torch.zeros(REF["C3"]))
    except RuntimeError as e:
        assert "channel count" in checks.explain_error(e)
    try:
        torch.zeros(REF["C3"]) + torch.zeros(REF["C4"])
    except RuntimeError as e:
        assert "same shape" in checks.explain_error(e)
    try:
        torch.zeros(2, device="meta").cpu()
    except NotImplementedError as e:
        assert "meta device" in checks.explain_error(e)
    assert checks.explain_error(RuntimeError("something new")) is None


def test_halved_too_often_or_too_rarely():
    e = REF["C4"]
    assert "too often" in checks.diagnose("C4", e, e[:2] + (e[2] // 2, e[3] // 2))
    assert "too rarely" in checks.diagnose("C4", e, e[:2] + (e[2] * 2, e[3] * 2))
    assert "max-pool" in checks.diagnose("stem", REF["stem"], REF["stem"][:2] + (240, 288))


def test_out_channels_256_vs_1024():
    e = REF["P4"]
    msg = checks.diagnose("P4", e, (1, 256) + e[2:])
    assert "out_channels" in msg and "1024" in msg


def test_p6_fed_from_p5():
    conv = torch.nn.Conv2d(1024, 1024, 3, 2, 1)
    spec = oracle.p6p7().p6
    e = fails(checks.check_conv, conv, "p6", spec.in_channels, spec.out_channels, 3, 2, 1)
    assert "fed P5" in str(e) and "C5" in str(e)
    checks.check_conv(spec, "p6", spec.in_channels, spec.out_channels, 3, 2, 1, bias=True)


def test_fakes_are_refused():
    class Fake:
        shape = REF["C3"]
        dtype = torch.float32
    e = fails(checks.check_tensor, Fake(), "C3", REF["C3"])
    assert "Fake" in str(e) and "looks like a tensor" in str(e)
    assert "return" in str(fails(checks.check_tensor, None, "C3"))

    class Sub(torch.Tensor):
        pass
    fails(checks.check_tensor, torch.zeros(2).as_subclass(Sub), "C3")


def test_dtype_and_device():
    assert "uint8" in str(fails(checks.check_tensor, torch.zeros(3, dtype=torch.uint8), "resized"))
    e = fails(checks.check_tensor, torch.zeros(3, device="meta"), "C3", device="cpu")
    assert "device" in str(e)


def test_values_name_the_largest_difference_not_the_answer():
    x = torch.randn(1, 4, 5, 6)
    y = x.clone()
    y[0, 2, 3, 4] += 1.0
    e = fails(checks.check_close, y, x, "P7", cause="is P7 computed from relu(P6)?")
    assert "(0, 2, 3, 4)" in str(e) and "relu(P6)" in str(e) and "1 of 120" in str(e)
    nan = x.clone()
    nan[0, 0, 0, 0] = float("nan")
    assert "NaN" in str(fails(checks.check_close, nan, x, "P7"))


def test_checks_survive_a_monkeypatched_torch(monkeypatch):
    """A learner's cell that patches the torch functions a value check uses (to say "close")
    does not fool the check in their kernel: the checks took them at import."""
    always_close = lambda *a, **k: torch.ones(1, dtype=torch.bool)    # noqa: E731
    patched = {"isclose": always_close, "isfinite": always_close,
               "abs": lambda t, *a, **k: torch.zeros_like(t), "argmax": lambda *a, **k: torch.tensor(0)}
    for name, fake in patched.items():
        monkeypatch.setattr(torch, name, fake)
    assert torch.isclose(torch.zeros(3), torch.ones(3)).all()          # the patch works...
    x = torch.zeros(3)
    e = fails(checks.check_close, x + 1, x, "P3")                      # ...the check holds
    assert "3 of 3 elements off" in str(e)


def test_delegation_is_detected_even_through_an_earlier_reference():
    from fpnlab.shapes import resized_size as taken_before

    def learner(h, w):
        return taken_before(h, w)

    e = fails(_run, learner)
    assert "write it yourself" in str(e)
    assert shapes.resized_size(*PHOTO) == tuple(REF["resized"][1:])   # restored


def _run(learner):
    with checks.no_calls_to("resized", shapes.resized_size):
        return learner(*PHOTO)


def test_own_code_passes_the_delegation_checks():
    def learner(h, w):
        short = REF["resized"][1]
        return short, int(short * w / h)
    assert _run(learner) == tuple(REF["resized"][1:])
    own = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU())
    checks.check_own_modules(own, "stem")
    e = fails(checks.check_own_modules, torch.nn.Sequential(oracle.FrozenBN(4)), "stem")
    assert "FrozenBatchNorm2d" in str(e)
