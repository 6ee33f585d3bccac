"""The judge without nbgrader: the hand-over codec, and verdicts from hand-overs built here.

A notebook's kernel is played by this process in hand-over mode (``fpnlab.judge.grading``),
capturing what it publishes; the judge (``autograder.judge.Lesson``) then scores those outputs
from the instructor's toy notebook. Both sides of each case: the right data earns the cell's
points, anything else loses exactly them.
"""
from __future__ import annotations

import json

import nbformat
import pytest
import torch
from torch import nn

from autograder import judge as judging
from fpnlab import judge as J
from fpnlab.checks import CheckError, check_own_modules
from grading import toy


def roundtrip(value):
    return J.decode(json.loads(json.dumps(J.encode(value))))


def test_codec_keeps_types_values_and_module_structure():
    x = torch.randn(2, 3)
    got = roundtrip({"t": x, "meta": torch.empty(1, 5, device="meta"), "pair": (48, 57),
                     "list": [1, 2.5, None, True], "size": torch.Size([1, 2]),
                     "dtype": torch.float16, "nan": float("nan"), "s": "x" * 500,
                     "bf": torch.ones(2, dtype=torch.bfloat16), "b": torch.tensor([True, False])})
    assert type(got["t"]) is torch.Tensor and torch.equal(got["t"], x)
    assert got["meta"].device.type == "meta" and got["meta"].shape == (1, 5)
    assert got["pair"] == (48, 57) and type(got["pair"]) is tuple
    assert got["list"] == [1, 2.5, None, True] and type(got["list"][0]) is int
    assert got["size"] == torch.Size([1, 2]) and got["dtype"] is torch.float16
    assert got["nan"] != got["nan"] and len(got["s"]) == J.MAX_STRING
    assert got["bf"].dtype is torch.bfloat16 and got["b"].tolist() == [True, False]

    class Mine(nn.Module):
        def __init__(self):
            super().__init__()
            self.p6 = nn.Conv2d(4, 2, 3, 2, 1)
            self.use_P5 = False
            self.register_buffer("running", torch.ones(2))

    m = roundtrip(Mine())
    assert type(m).__name__ == "Mine" and m.use_P5 is False
    assert type(m.p6) is nn.Conv2d and m.p6.stride == (2, 2) and m.p6.padding == (1, 1)
    assert torch.equal(m.p6.weight, Mine().p6.weight) is False            # values travel ...
    src = Mine()
    assert torch.equal(roundtrip(src).p6.weight, src.p6.weight)           # ... exactly
    assert torch.equal(m.running, torch.ones(2))


def test_codec_reports_fakes_and_ready_made_classes_by_name():
    class FakeTensor:
        shape = (1, 3, 48, 57)

    fake = roundtrip(FakeTensor())
    assert type(fake) is not torch.Tensor and type(fake).__name__ == "FakeTensor"
    assert hasattr(fake, "shape")
    import torchvision
    block = roundtrip(nn.Sequential(torchvision.ops.FrozenBatchNorm2d(4)))
    with pytest.raises(CheckError, match="torchvision.ops.misc.FrozenBatchNorm2d"):
        check_own_modules(block, "stem")
    check_own_modules(roundtrip(nn.Sequential(nn.Conv2d(1, 1, 1), nn.ReLU())), "stem")


@pytest.mark.parametrize("bad", [
    {"t": "tensor", "dtype": "float32", "shape": [2, 2], "device": "cpu", "data": "AAAA"},
    {"t": "tensor", "dtype": "complex128", "shape": [1], "device": "cpu", "data": None},
    {"t": "tensor", "dtype": "float32", "shape": [-1], "device": "cpu", "data": None},
    {"t": "dict", "k": [1], "v": []},
    {"t": "pickle", "v": "gASV"},
    {"t": "module", "mro": [], "attrs": {}},
    "a bare string",
])
def test_decode_refuses_what_encode_does_not_make(bad):
    with pytest.raises(J.HandOverError):
        J.decode(bad)


# ----------------------------------------------------------------------------- verdicts

@pytest.fixture(scope="module")
def lesson(tmp_path_factory):
    course = toy.make_course(tmp_path_factory.mktemp("judge"))
    return judging.Lesson(course / toy.LESSON / toy.NOTEBOOK)


def kernel_run(nb) -> nbformat.NotebookNode:
    """Run ``nb`` here as a graded kernel would (hand-over mode), keeping what it publishes.
    As nbgrader does, the test cells are the source's (hidden tests included)."""
    nb = nbformat.from_dict(json.loads(json.dumps(nb)))
    source = {c.metadata["nbgrader"]["grade_id"]: c.source for c in toy.source_notebook().cells
              if c.metadata.get("nbgrader", {}).get("grade")}
    for cell in nb.cells:
        gid = cell.metadata.get("nbgrader", {}).get("grade_id")
        if gid in source:
            cell.source = source[gid]
    nb = judging.inject(nb)
    published = []
    saved = J._publish
    J._publish = published.append
    ns = {}
    try:
        for cell in nb.cells:
            if cell.cell_type != "code":
                continue
            published.clear()
            try:
                exec(cell.source, ns)
            except Exception:  # noqa: BLE001 (a blank answer raises; the judge decides)
                pass
            cell.outputs = [nbformat.v4.new_output("display_data", data={J.MIME: p})
                            for p in published]
    finally:
        J._publish = saved
        J.local()
    return nb


def scores(lesson, nb):
    return {v["grade_id"]: v["score"] for v in lesson.judge(nb)}


def test_the_solution_earns_every_point_and_the_blank_release_none(lesson):
    assert scores(lesson, kernel_run(toy.with_answer(toy.SOLUTION))) == {
        "pad-to-shapes": 2, "pad-to-values": 1}
    assert scores(lesson, kernel_run(toy.release_notebook())) == {
        "pad-to-shapes": 0, "pad-to-values": 0}
    assert scores(lesson, kernel_run(toy.with_answer(toy.WRONG_VALUES))) == {
        "pad-to-shapes": 2, "pad-to-values": 0}


def _test_cell(nb, gid):
    return next(c for c in nb.cells if c.metadata.get("nbgrader", {}).get("grade_id") == gid)


def test_missing_duplicated_foreign_and_malformed_hand_overs_score_zero(lesson):
    good = kernel_run(toy.with_answer(toy.SOLUTION))
    cell = _test_cell(good, "pad-to-shapes")
    one = cell.outputs[0]
    cases = {
        "missing": [],
        "one of three": [one],
        "duplicated": list(cell.outputs) + [one],
        "foreign grade id": [nbformat.from_dict({**o, "data": {J.MIME: {
            **o["data"][J.MIME], "grade_id": "pad-to-values"}}}) for o in cell.outputs],
        "malformed": [nbformat.from_dict({**o, "data": {J.MIME: {
            **o["data"][J.MIME], "value": {"t": "tensor", "shape": "big"}}}}) for o in cell.outputs],
        "not JSON data": [nbformat.v4.new_output("display_data", data={J.MIME: "{}"})],
    }
    assert scores(lesson, good)["pad-to-shapes"] == 2
    for name, outputs in cases.items():
        nb = nbformat.from_dict(json.loads(json.dumps(good)))
        _test_cell(nb, "pad-to-shapes").outputs = outputs
        got = scores(lesson, nb)
        assert got == {"pad-to-shapes": 0, "pad-to-values": 1}, name


def test_an_exception_is_named_only_when_it_is_a_known_one(lesson):
    raising = toy.SOLUTION.replace('    """Zero-pad', '''    if tuple(x.shape) == (2, 9, 3):
        raise type("SECRETxLEAKxNAME", (Exception,), {})("SECRET message")
    if x.dim() == 4:
        raise ValueError("SECRET value")
    """Zero-pad''')
    verdicts = {v["grade_id"]: v for v in lesson.judge(kernel_run(toy.with_answer(raising)))}
    assert verdicts["pad-to-values"]["score"] == 0 and verdicts["pad-to-shapes"]["score"] == 0
    assert "raised an exception" in verdicts["pad-to-values"]["message"]
    assert "raised ValueError" in verdicts["pad-to-shapes"]["message"]
    assert "SECRET" not in json.dumps(verdicts)


def test_words_from_the_learners_data_are_cut_from_messages(lesson):
    handovers = {(0, 0): {"value": {"t": "object", "type": "MZXW6YTBOI_hidden", "has_shape": True}}}
    msg = "case 1: padded: got a MZXW6YTBOI_hidden but expected a torch.Tensor."
    shown = judging._without_learner_words(msg, handovers, lesson.public)
    assert "MZXW6YTBOI" not in shown and "torch.Tensor" in shown and "padded" in shown
    # a real library class keeps its name
    real = {(0, 0): {"value": {"t": "module", "mro": ["torchvision.ops.misc:FrozenBatchNorm2d"]}}}
    msg = "uses torchvision.ops.misc.FrozenBatchNorm2d at layer1"
    assert judging._without_learner_words(msg, real, lesson.public) == msg


def test_local_mode_raises_the_message_the_judge_gives(lesson):
    """A learner running the release sees the same message as the feedback will show."""
    wrong = toy.with_answer(toy.WRONG_VALUES)
    ns = {}
    message = None
    for cell in wrong.cells:
        if cell.cell_type == "code":
            try:
                exec(cell.source, ns)
            except CheckError as e:
                message = message or str(e)
    verdict = next(v for v in lesson.judge(kernel_run(wrong)) if v["grade_id"] == "pad-to-values")
    assert message and verdict["message"].endswith(message)


def test_feedback_notebook_holds_verdicts_and_no_kernel_output(lesson):
    nb = kernel_run(toy.with_answer(toy.WRONG_VALUES))
    for cell in nb.cells:
        if cell.cell_type == "code" and not cell.get("outputs"):
            cell.outputs = [nbformat.v4.new_output("stream", text="kernel printout")]
    verdicts = lesson.judge(nb)
    from autograder.grade import strip_hidden
    fb = judging.feedback_notebook(nb, verdicts, strip_hidden)
    text = json.dumps(fb)
    assert "kernel printout" not in text and J.MIME not in text
    assert "HIDDEN" not in text and judging.HANDOVER_MARK not in text
    assert "PASS  2/2" in text and "values differ from the oracle" in text


def test_a_learners_exception_gains_the_stage_the_case_and_a_cause_in_their_kernel():
    from fpnlab.reference import reference_shapes

    ref = reference_shapes()
    lateral = torch.nn.Conv2d(ref["C4"][1], 8, 1)

    def outputs(case):
        return lateral(torch.zeros(ref["C3"]))      # the C3 fed to C4's lateral

    with pytest.raises(RuntimeError) as e:
        J.run_test(outputs, lambda case, got: None, [dict(level="P4")], stage="the FPN forward")
    notes = " ".join(getattr(e.value, "__notes__", []))
    assert "the FPN forward, case 1 (level='P4')" in notes and "channel count" in notes
    # torch's own NotImplementedError (meta tensors have no data) is explained too
    with pytest.raises(NotImplementedError) as e:
        J.run_test(lambda case: torch.zeros(2, device="meta").cpu(), lambda case, got: None,
                   [{}], stage="the padding")
    assert "meta device" in " ".join(e.value.__notes__)
    # the course's own errors already say everything: no note
    with pytest.raises(CheckError) as e:
        J.run_test(lambda case: check_own_modules(None, "s"), lambda case, got: None, [{}],
                   stage="s")
    assert not getattr(e.value, "__notes__", None)
