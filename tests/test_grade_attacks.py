"""Learners who try to forge their grade: one sandboxed batch of the toy course, graded by the judge.

Three classes, each a submission of its own, graded in ONE `fpnlab grade` run:

- **verdict tricks** on the blank release (the kernel made to report that its tests passed):
  each scores 0;
- **tampering tricks** on a wrong answer (right shapes, wrong values: 2 honest points of 3):
  each keeps exactly its 2 honest points;
- **leaks**: a correct answer whose kernel reads the hidden tests as they run and prints them
  encoded (base64, reversed, one character per line, SVG, HTML entities, an exception's class
  name): it keeps its marks, and no feedback page holds a hidden test under any of these
  encodings.

The scores come from the judge (`autograder/judge.py`), a process with no learner code.
"""
from __future__ import annotations

import base64
import binascii
import html
import re

import pytest

from autograder import grade as G
from autograder import sandbox
from conftest import requires
from grading import toy

pytestmark = [pytest.mark.slow, requires(sandbox.bwrap_available() is not None, "needs bubblewrap")]

HOOKS = "ip = get_ipython()\n"

# Each trick is learner code placed in a cell before the answer.
VERDICT_TRICKS = {
    "post-run-hook": HOOKS + (
        "def clear(result):\n"
        "    result.error_in_exec = None\n"
        "    result.error_before_exec = None\n"
        "ip.events.register('post_run_cell', clear)\n"
        "ip.showtraceback = lambda *a, **k: None"),
    "custom-exc": HOOKS + "ip.set_custom_exc((BaseException,), lambda *a, **k: None)",
    "ast-transformer": HOOKS + (
        "import ast\n"
        "class Empty(ast.NodeTransformer):\n"
        "    def visit_Module(self, node):\n"
        "        return ast.Module(body=[ast.Pass()], type_ignores=[])\n"
        "ip.ast_transformers.append(Empty())"),
    "rebind-run-test": (
        "import fpnlab.judge\n"
        "fpnlab.judge.run_test = run_test = lambda *a, **k: None\n"
        "fpnlab.judge.grading = lambda *a, **k: None"),
    "input-transformer": HOOKS + "ip.input_transformers_post.append(lambda lines: ['pass\\n'])",
    "wrapped-run-cell": HOOKS + (
        "real = ip.run_cell\n"
        "def run_cell(raw_cell, *a, **k):\n"
        "    return real('None', *a, **k)\n"
        "ip.run_cell = run_cell"),
    "signal-handler": (
        "import signal\n"
        "def swallow(*a):\n"
        "    raise KeyboardInterrupt\n"
        "signal.signal(signal.SIGALRM, swallow)\n"
        "signal.setitimer(signal.ITIMER_REAL, 0.5, 0.5)"),
    "partial-credit-number": HOOKS + (
        "import ast\n"
        "class Score(ast.NodeTransformer):\n"
        "    def visit_Module(self, node):\n"
        "        node.body = [ast.Expr(ast.Constant(3.0))]\n"
        "        return node\n"
        "ip.ast_transformers.append(Score())"),
    "partial-credit-text": HOOKS + (
        "import sys\n"
        "class Hook:\n"
        "    def __call__(self, value):\n"
        "        ip.display_pub.publish({'text/plain': 'full marks'})\n"
        "sys.displayhook = Hook()\n"
        "ip.events.register('post_run_cell', lambda r: setattr(r, 'error_in_exec', None))"),
}

TAMPERING_TRICKS = {
    "patch-checks": (
        "import fpnlab.checks\n"
        "fpnlab.checks.check_close = lambda *a, **k: None\n"
        "check_close = fpnlab.checks.check_close"),
    "kwdefaults": (
        "import fpnlab.checks\n"
        "fpnlab.checks.check_close.__kwdefaults__ = {'rtol': 1e9, 'atol': 1e9, 'cause': None}"),
    "library-filename": (
        "import fpnlab.checks\n"
        "g = {}\n"
        "exec(compile('def check_close(*a, **k):\\n    return None\\n',\n"
        "             '/usr/lib/python3/dist-packages/numpy/core/fromnumeric.py', 'exec'), g)\n"
        "fpnlab.checks.check_close = g['check_close']\n"
        "check_close = g['check_close']"),
    "torch-function-mode": (
        "import torch\n"
        "from torch.overrides import TorchFunctionMode\n"
        "class AllClose(TorchFunctionMode):\n"
        "    def __torch_function__(self, func, types, args=(), kwargs=None):\n"
        "        out = func(*args, **(kwargs or {}))\n"
        "        if func in (torch.isclose, torch.Tensor.all):\n"
        "            out = torch.ones_like(out, dtype=torch.bool)\n"
        "        return out\n"
        "AllClose().__enter__()"),
    "builtins-import": (
        "import builtins, types\n"
        "fake = types.ModuleType('fpnlab.checks')\n"
        "fake.check_close = fake.check_shape = fake.check_tensor = lambda *a, **k: None\n"
        "real_import = builtins.__import__\n"
        "def imp(name, *a, **k):\n"
        "    return fake if name == 'fpnlab.checks' else real_import(name, *a, **k)\n"
        "builtins.__import__ = imp"),
    "settrace-into-check": (
        "import sys\n"
        "def tracer(frame, event, arg):\n"
        "    if frame.f_code.co_name == 'check_close':\n"
        "        def jump(f, e, a):\n"
        "            if e == 'line' and f.f_lineno > f.f_code.co_firstlineno + 8:\n"
        "                try:\n"
        "                    f.f_lineno = f.f_code.co_firstlineno + 40\n"
        "                except ValueError:\n"
        "                    pass\n"
        "            return jump\n"
        "        return jump\n"
        "    return None\n"
        "sys.settrace(tracer)"),
    "rebind-helpers": (
        "import torch\n"
        "seeded = lambda shape, seed: torch.zeros(*shape)\n"
        "padded_shape = lambda shape, d: tuple(shape)\n"
        "import fpnlab.shapes, fpnlab.reference\n"
        "fpnlab.reference.reference_shapes = lambda *a, **k: {}"),
    "torch-patch": (
        "import torch\n"
        "torch.isclose = lambda a, b, **k: torch.ones(a.shape, dtype=torch.bool)\n"
        "torch.Tensor.all = lambda self, *a, **k: torch.tensor(True)"),
}

# A correct answer whose kernel reads each test cell as it runs and shows it, encoded, wherever
# it can: in the test cells' outputs, in later cells, as SVG and HTML, and through exceptions.
LEAK = HOOKS + r'''
import base64, sys
from IPython.display import SVG, HTML, display
seen = []
def grab(info):
    seen.append(info.raw_cell)
    text = info.raw_cell
    print(base64.b64encode(text.encode()).decode())
    print(text[::-1])
    print("\n".join(text))
    display(SVG("<svg xmlns='http://www.w3.org/2000/svg'><text>%s</text></svg>" % text.replace("<", "")))
    display(HTML("".join("&#%d;" % ord(c) for c in text)))
    sys.stderr.write(base64.b32encode(text.encode()).decode() + "\n")
def after(result):
    for text in seen:
        print(text)
        print(text.encode().hex())
ip.events.register("pre_run_cell", grab)
ip.events.register("post_run_cell", after)'''

# Raises, for the hidden cases only, an exception whose class name carries the hidden tests.
LEAK_BY_EXCEPTION = toy.SOLUTION.replace('    """Zero-pad', '''    import sys, base64
    if tuple(x.shape) not in ((3, 100, 70), (3, 5, 7)):
        seen = "".join(sys.modules["__main__"].In)
        name = "E" + base64.b32encode(seen.encode()).decode().rstrip("=")[:4000]
        raise type(name, (Exception,), {})("leak: " + seen)
    """Zero-pad''')

MARKERS = ("HIDDEN-VALUE-CAUSE", "(1, 3, 50, 70)", "(2, 31, 33)", "hidden_judge")


def leaks(page: str) -> list:
    """Which hidden-test markers a feedback page holds, under any of the encodings above."""
    texts = {page, html.unescape(page), html.unescape(html.unescape(page))}
    texts |= {re.sub(r"\s+", "", t) for t in list(texts)}
    texts |= {t[::-1] for t in list(texts)}
    decoded = set()
    for t in texts:
        for run in re.findall(r"[A-Za-z0-9+/=]{16,}", t):
            for dec in (base64.b64decode, base64.b32decode, binascii.unhexlify):
                try:
                    decoded.add(dec(run + "=" * (-len(run) % 8 if dec is base64.b32decode else
                                                 -len(run) % 4 if dec is base64.b64decode else 0))
                                .decode("utf-8", "replace"))
                except (binascii.Error, ValueError):
                    pass
    texts |= decoded
    found = []
    for marker in MARKERS:
        squeezed = re.sub(r"\s+", "", marker)
        if any(marker in t or squeezed in t for t in texts):
            found.append(marker)
    return found


def test_leaks_detector_finds_each_encoding():
    line = "check_close(y, x, cause='HIDDEN-VALUE-CAUSE')"
    for page in (line, html.escape(line), "".join(f"&#{ord(c)};" for c in line), line[::-1],
                 "\n".join(line), base64.b64encode(line.encode()).decode(),
                 base64.b32encode(line.encode()).decode(), line.encode().hex()):
        assert leaks(page) == ["HIDDEN-VALUE-CAUSE"], page[:60]
    assert leaks("padded: shape (3, 1, 1) but expected (3, 128, 96).") == []


@pytest.fixture(scope="module")
def batch(tmp_path_factory):
    root = tmp_path_factory.mktemp("attacks")
    course = toy.make_course(root / "course")
    students = {"solution": toy.with_answer(toy.SOLUTION),
                "wrong-honest": toy.with_answer(toy.WRONG_VALUES),
                "leak-hooks": toy.with_answer(toy.SOLUTION, extra_before=LEAK),
                "leak-exception": toy.with_answer(LEAK_BY_EXCEPTION)}
    for name, trick in VERDICT_TRICKS.items():
        students[f"blank-{name}"] = toy.with_answer(toy.release_notebook().cells[2].source,
                                                    extra_before=trick)
    for name, trick in TAMPERING_TRICKS.items():
        students[f"wrong-{name}"] = toy.with_answer(toy.WRONG_VALUES, extra_before=trick)
    subs = toy.class_of(root / "subs", students)
    out = root / "out"
    G.grade(toy.LESSON, subs, out, workers=2, source=course, settings=G.Settings(timeout=60),
            progress=False, log=lambda m: None)
    rows = G.read_grades(out / "grades.csv")
    return out, {sid: row for (sid, _), row in rows.items()}


def _feedback(out, student) -> str:
    return (out / "feedback" / student / toy.LESSON / f"{toy.LESSON}.html").read_text()


def test_honest_submissions_keep_their_points(batch):
    _, rows = batch
    assert (rows["solution"].score, rows["solution"].max_score, rows["solution"].status) == (3, 3, "graded")
    assert rows["wrong-honest"].score == 2


@pytest.mark.parametrize("trick", sorted(VERDICT_TRICKS))
def test_verdict_tricks_on_a_blank_release_score_zero(batch, trick):
    _, rows = batch
    row = rows[f"blank-{trick}"]
    assert row.status in ("graded", "killed", "timeout"), row
    assert (row.score, row.max_score) == (0, 3), row


@pytest.mark.parametrize("trick", sorted(TAMPERING_TRICKS))
def test_tampering_keeps_only_the_honest_points(batch, trick):
    _, rows = batch
    row = rows[f"wrong-{trick}"]
    honest = rows["wrong-honest"].score
    assert row.status == "graded", row
    assert row.score == honest == 2, row


def test_leaking_kernels_keep_their_marks_but_feedback_shows_no_hidden_test(batch):
    out, rows = batch
    assert rows["leak-hooks"].score == 3
    # The hidden cases raised, with the hidden tests in the exception's name and message:
    # only the visible cases pass, and the feedback says "an exception", nothing of the name.
    assert rows["leak-exception"].score == 0
    page = _feedback(out, "leak-exception")
    assert "raised an exception" in page
    for student in rows:
        page = _feedback(out, student)
        assert leaks(page) == [], (student, leaks(page))
        assert "fpnlab.handover" not in page          # no hand-over data reaches feedback


def test_feedback_shows_each_test_cells_points_and_the_judges_message(batch):
    out, _ = batch
    page = _feedback(out, "wrong-honest")
    assert "PASS  2/2" in page
    assert "values differ from the oracle" in page and "0/1" in page
    assert "pad-to-values" in page or "Test cell" in page
