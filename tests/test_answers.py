"""fpnlab.answers: a learner's answers from an earlier lesson, without its tests or side effects."""
from pathlib import Path

import nbformat
import pytest
import torch

from autograder import authoring as A
from fpnlab.answers import AnswerError, load_answers

ROOT = Path(__file__).resolve().parent.parent


def lesson(tmp_path, answer, name="03-toy"):
    nb = A.notebook([
        A.setup_cell(),
        A.md("# A toy lesson"),
        A.locked("import math\nfrom collections import namedtuple\nSCALE = 3\nPair = namedtuple('Pair', 'a b')\nPAIR = Pair(1, 2)\ndef helper(x):\n    return x * SCALE\n"
               "raise RuntimeError('a demonstration ran')", "given"),
        A.solution(answer, "double"),
        A.tests("raise AssertionError('a test cell ran')", "double-tests", points=1),
        A.locked("print('plotting')\nraise RuntimeError('a demonstration ran')", "demo"),
    ])
    path = tmp_path / name / f"{name}.ipynb"
    A.write(nb, path)
    return path


SOLVED = "%matplotlib inline\ndef double(x):\n    ### BEGIN SOLUTION\n    return Pair(helper(x) * 2 // SCALE, 0).a + math.floor(0.5)\n    ### END SOLUTION\nTWO = 2"
STUB = "def double(x):\n    # YOUR CODE HERE\n    raise NotImplementedError()"


def test_runs_answers_and_definitions_only(tmp_path):
    own = load_answers(lesson(tmp_path, SOLVED), ["double", "TWO"])
    assert set(own) == {"double", "TWO"}
    assert own["double"](5) == 10 and own["TWO"] == 2
    # PAIR = Pair(1, 2) is a computation in a given cell, not a definition: it did not run.
    with pytest.raises(AnswerError, match="`PAIR` is not defined"):
        load_answers(lesson(tmp_path, SOLVED), ["PAIR"])


def test_default_names_are_what_the_answer_cells_define(tmp_path):
    assert set(load_answers(lesson(tmp_path, SOLVED))) == {"double", "TWO"}


def test_a_stub_says_which_exercise_to_finish(tmp_path):
    with pytest.raises(AnswerError, match=r"lesson 03-toy: `double` still raises "
                                          r"NotImplementedError: finish exercise `double` first"):
        load_answers(lesson(tmp_path, STUB), ["double"])


def test_an_unanswered_top_level_exercise_leaves_the_other_answers_usable(tmp_path):
    path = lesson(tmp_path, SOLVED)
    nb = nbformat.read(str(path), as_version=4)
    nb.cells.insert(4, A.solution("first_wrong = None\n# YOUR CODE HERE\nraise NotImplementedError()",
                                  "bug-level"))
    nbformat.write(nb, str(path))
    assert load_answers(path, ["double"])["double"](5) == 10
    with pytest.raises(AnswerError, match=r"`first_wrong` (is not defined|still raises "
                                          r"NotImplementedError): finish exercise `bug-level`"):
        load_answers(path, ["first_wrong"])


def test_a_missing_name_names_the_lesson_and_its_exercises(tmp_path):
    path = lesson(tmp_path, SOLVED)
    with pytest.raises(AnswerError, match=r"lesson 03-toy: `ResNet` is not defined: no exercise "
                                          r"of this lesson defines it \(its exercises: `double`\)"):
        load_answers(path, ["ResNet"])
    # A learner who deleted their definition is told which exercise it belongs to.
    nb = nbformat.read(str(path), as_version=4)
    nb.cells[3].source = "def double(x):\n    return 2 * x\ndel double"
    nbformat.write(nb, str(path))
    with pytest.raises(AnswerError, match="finish exercise `double` first"):
        load_answers(path, ["double"])


def test_an_answer_that_fails_to_run_is_reported(tmp_path):
    with pytest.raises(AnswerError, match=r"exercise `double` raised ZeroDivisionError"):
        load_answers(lesson(tmp_path, "x = 1 / 0"), ["x"])
    with pytest.raises(AnswerError, match=r"exercise `double` has a syntax error"):
        load_answers(lesson(tmp_path, "def double(x) return x"), ["double"])


def test_a_missing_notebook_is_named(tmp_path):
    with pytest.raises(AnswerError, match=r"lesson 04-fpn: notebook not found"):
        load_answers(tmp_path / "04-fpn" / "04-fpn.ipynb")


def test_the_stage_5_solution_loads_and_its_release_does_not():
    own = load_answers(ROOT / "solutions" / "05-p6p7" / "05-p6p7.ipynb", ["LastLevelP6P7"])
    block = own["LastLevelP6P7"](16, 8)
    p6, p7 = block(torch.randn(1, 16, 15, 18), torch.randn(1, 8, 15, 18))
    assert tuple(p6.shape) == (1, 8, 8, 9) and tuple(p7.shape) == (1, 8, 4, 5)
    with pytest.raises(AnswerError, match=r"`LastLevelP6P7` still raises NotImplementedError: "
                                          r"finish exercise `p6p7` first"):
        load_answers(ROOT / "lessons" / "05-p6p7" / "05-p6p7.ipynb", ["LastLevelP6P7"])


def test_the_course_solutions_run_end_to_end_through_load_answers():
    """What lesson 06's ungraded section does: every stage's own parts, assembled by the stage 6
    builder, reproduce the reference trace (meta device; preprocessing for real)."""
    from types import SimpleNamespace

    import torchvision.transforms.functional as TF

    from fpnlab.config import default_cfg
    from fpnlab.images import sample_image
    from fpnlab.reference import reference_shapes
    from fpnlab.tracing import diff, trace_model

    def load(lesson, *names):
        return load_answers(ROOT / "solutions" / lesson / f"{lesson}.ipynb", names)

    pre = load("01-preprocessing", "resized_size", "to_bgr255", "to_image_list")
    body = load("03-body", "ResNet")["ResNet"]
    fpn = load("04-fpn", "FPN", "conv_with_kaiming_uniform")
    build = load("06-backbone", "build_resnet_fpn_p3p7_backbone")["build_resnet_fpn_p3p7_backbone"]
    parts = SimpleNamespace(ResNet=lambda cfg: body(stride_in_1x1=cfg.MODEL.RESNETS.STRIDE_IN_1X1,
                                                    freeze_at=cfg.MODEL.BACKBONE.FREEZE_CONV_BODY_AT),
                            FPN=fpn["FPN"], conv_with_kaiming_uniform=fpn["conv_with_kaiming_uniform"],
                            LastLevelP6P7=load("05-p6p7", "LastLevelP6P7")["LastLevelP6P7"])
    image = sample_image()
    h, w = pre["resized_size"](image.height, image.width)
    padded = pre["to_image_list"]([pre["to_bgr255"](TF.resize(image, [h, w]))]).tensors
    with torch.device("meta"):
        model = build(default_cfg(), parts).eval()
    traced = trace_model(model, torch.empty(padded.shape, device="meta")).shapes()
    traced["resized"] = (3, h, w)
    expected = {k: v for k, v in reference_shapes().items() if k != "image"}
    assert diff(traced, expected) == []
