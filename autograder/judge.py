"""The trusted judge: scores a graded notebook from what its kernel handed over, in a process
that never runs a line of the learner's code.

nbgrader executes a submission in the sandboxed kernel; every graded test cell there only
computes (``fpnlab.judge.run_test`` in hand-over mode) and publishes its results as data. This
module then, outside the sandbox:

1. builds a namespace from the *instructor's* notebook: its locked cells that are neither
   answers nor tests (setup, helpers, reference values), run once per lesson;
2. runs each test cell of the instructor's notebook (hidden tests included) in that namespace
   with ``fpnlab.judge.judging``: ``judge(case, got)`` compares each handed-over result with
   what the oracle and ``fpnlab.checks`` compute here; the first failing case fails the cell;
3. writes each test cell's score into the gradebook (nbgrader's own pass/fail, read from the
   kernel's error outputs, and its partial credit from ``execute_result`` are discarded), and
   rewrites the autograded notebook so that feedback shows only verdicts: each test cell with
   the release's text, its points and the judge's message; no output of a test cell or of
   anything that ran after the first test cell.

``python -m autograder.judge`` serves requests, one JSON object per line on stdin
(``{"source": instructor.ipynb, "autograded": notebook.ipynb}``), one answer per line on stdout
(``{"verdicts": [...]}`` or ``{"error": "..."}``): one process per grading worker, so torch is
imported once.
"""
from __future__ import annotations

import contextlib
import copy
import io
import json
import os
import re
import subprocess
import sys
import threading
from pathlib import Path
from typing import Dict, List, Optional

import nbformat

ROOT = Path(__file__).resolve().parent.parent
HANDOVER_MARK = "fpnlab grader: hand over"
MAX_MESSAGE = 2000
WORD = re.compile(r"[A-Za-z0-9_]{4,}")


def _meta(cell) -> dict:
    return (cell.get("metadata") or {}).get("nbgrader") or {}


def grade_cells(nb) -> List:
    return [c for c in nb.cells if c.cell_type == "code" and _meta(c).get("grade")]


def inject(nb: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """The grader's copy of a lesson: every test cell first switches to hand-over mode."""
    for cell in grade_cells(nb):
        if HANDOVER_MARK not in cell.source:
            gid = _meta(cell)["grade_id"]
            cell.source = (f'__import__("fpnlab.judge").judge.grading({gid!r})  # {HANDOVER_MARK}\n'
                           + cell.source)
    return nb


# ----------------------------------------------------------------------------- judging

class Lesson:
    """The instructor's notebook, ready to judge: the namespace of its locked cells and the
    compiled test cells."""

    def __init__(self, path: Path):
        self.path = Path(path)
        nb = nbformat.read(str(self.path), as_version=4)
        self.tests = []
        self.namespace: Dict[str, object] = {"__name__": "__judge__"}
        from IPython.core.inputtransformer2 import TransformerManager

        transform = TransformerManager().transform_cell
        self.setup_errors = []
        self.public = _public_words(nb)
        for i, cell in enumerate(nb.cells):
            meta = _meta(cell)
            if cell.cell_type != "code":
                continue
            source = "\n".join(ln for ln in cell.source.splitlines() if HANDOVER_MARK not in ln)
            if meta.get("grade"):
                self.tests.append((meta["grade_id"], float(meta.get("points", 0) or 0),
                                   compile(transform(source), f"<test {meta['grade_id']}>", "exec")))
            elif meta.get("locked") and not meta.get("solution"):
                try:
                    with _quiet():
                        exec(compile(transform(source), f"<locked cell {i}>", "exec"), self.namespace)
                except Exception as e:  # noqa: BLE001 (a helper that needs the learner's code)
                    self.setup_errors.append(f"cell {i}: {type(e).__name__}: {e}")

    def judge(self, autograded: nbformat.NotebookNode) -> List[dict]:
        """One verdict per test cell of the instructor's notebook, in its order."""
        from fpnlab import judge as J

        cells: Dict[str, object] = {}
        for cell in grade_cells(autograded):
            cells.setdefault(_meta(cell).get("grade_id"), cell)
        ns = dict(self.namespace)
        verdicts = []
        for gid, points, code in self.tests:
            cell = cells.get(gid)
            handovers, problem = J.handovers_of(cell, gid) if cell is not None else ({}, "")
            found: List[dict] = []
            message = problem
            if not problem:
                J.judging(gid, handovers, found)
                try:
                    with _quiet():
                        exec(code, ns)
                except Exception as e:  # noqa: BLE001 (the test itself is broken: say so)
                    found.append({"passed": False, "message": f"the judge failed on this test "
                                                               f"({type(e).__name__}: {e})"})
                finally:
                    J.local()
                failed = [v for v in found if not v["passed"]]
                if failed:
                    message = failed[0]["message"]
                elif not found:
                    message = "the test judged nothing"
            passed = not message
            if message and handovers:
                message = _without_learner_words(message, handovers, self.public)
            verdicts.append({"grade_id": gid, "points": points, "score": points if passed else 0.0,
                             "passed": passed, "message": message[:MAX_MESSAGE]})
        return verdicts


def _public_words(nb) -> set:
    """Words a message may show although the learner's data holds them: those of the
    instructor's notebook outside its hidden tests, and of the checks' own messages. Any other word that came from the learner's data is cut out of a verdict, so a
    kernel cannot smuggle text (hidden tests it saw, encoded) into feedback through a name."""
    from autograder.grade import strip_hidden

    words = set()
    for cell in nb.cells:
        text = cell.source
        if _meta(cell).get("grade"):
            text = strip_hidden(text)
        words |= set(WORD.findall(text))      # solutions too: a learner who wrote one knows it
    import fpnlab.checks
    import fpnlab.judge
    for mod in (fpnlab.checks, fpnlab.judge):
        words |= set(WORD.findall(Path(mod.__file__).read_text()))
    return words


def _learner_strings(value, out: set, depth: int = 0) -> set:
    """Every string in a hand-over (values, names of classes, modules and attributes)."""
    if depth > 60:
        return out
    if isinstance(value, str):
        out.add(value)
    elif isinstance(value, dict):
        for k, v in value.items():
            out.add(str(k))
            _learner_strings(v, out, depth + 1)
    elif isinstance(value, list):
        for v in value:
            _learner_strings(v, out, depth + 1)
    return out


def _real_class_words(strings: set) -> set:
    """Words of class paths (``module:qualname``) that name a real class of an installed
    library here: their names are public."""
    ok = set()
    for s in strings:
        mod, sep, name = s.partition(":")
        if sep and not mod.startswith("__main__") and mod in sys.modules:
            obj = sys.modules[mod]
            for part in name.split("."):
                obj = getattr(obj, part, None)
            if isinstance(obj, type):
                ok |= set(WORD.findall(s))
    return ok


def _without_learner_words(message: str, handovers: dict, public: set) -> str:
    strings = _learner_strings(list(handovers.values()), set())
    allowed = public | _real_class_words(strings)
    foreign = {w for s in strings for w in WORD.findall(s)} - allowed
    if not foreign:
        return message
    return WORD.sub(lambda m: "..." if m.group(0) in foreign else m.group(0), message)


@contextlib.contextmanager
def _quiet():
    """Prints of the instructor's cells go nowhere (stdout is the judge's answer channel)."""
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        yield


def serve(stdin=None, stdout=None) -> int:
    """Answer judge requests until stdin closes (see the module's docstring)."""
    stdin = stdin or sys.stdin
    out = stdout or os.fdopen(os.dup(1), "w")
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)                 # C-level prints cannot corrupt the answers
    lessons: Dict[str, Lesson] = {}
    for line in stdin:
        if not line.strip():
            continue
        try:
            request = json.loads(line)
            if "prepare" in request:       # get lessons ready while nbgrader runs: no answer
                for source in request["prepare"]:
                    key = f"{source}:{os.stat(source).st_mtime_ns}"
                    if key not in lessons:
                        lessons[key] = Lesson(Path(source))
                continue
            source = str(request["source"])
            key = f"{source}:{os.stat(source).st_mtime_ns}"
            if key not in lessons:
                lessons[key] = Lesson(Path(source))
                if lessons[key].setup_errors:   # demonstrations that need the learner's code
                    print(f"judge: {source}: locked cells that did not run here (a test that "
                          f"needs them fails): {lessons[key].setup_errors}", file=sys.stderr)
            nb = nbformat.read(str(request["autograded"]), as_version=4)
            answer = {"verdicts": lessons[key].judge(nb)}
        except Exception as e:  # noqa: BLE001 (one bad request never stops the judge)
            answer = {"error": f"{type(e).__name__}: {e}"[:500]}
        out.write(json.dumps(answer) + "\n")
        out.flush()
    return 0


class Client:
    """A judge process (``python -m autograder.judge``) and its request channel."""

    def __init__(self, env: Optional[dict] = None):
        full = dict(os.environ)
        full.update(env or {})
        full["PYTHONPATH"] = os.pathsep.join([str(ROOT), full.get("PYTHONPATH", "")]).rstrip(os.pathsep)
        for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
            full.setdefault(var, "1")
        self.proc = subprocess.Popen([sys.executable, "-m", "autograder.judge"], cwd=str(ROOT),
                                     env=full, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True)
        self.lock = threading.Lock()
        self.stderr: List[str] = []
        threading.Thread(target=self._drain, daemon=True).start()

    def _drain(self):
        for line in self.proc.stderr:
            self.stderr = (self.stderr + [line])[-50:]

    def prepare(self, sources: List[Path]) -> None:
        """Let the judge read these lessons now (it does so while nbgrader runs the notebooks)."""
        with self.lock:
            try:
                self.proc.stdin.write(json.dumps({"prepare": [str(s) for s in sources]}) + "\n")
                self.proc.stdin.flush()
            except (OSError, ValueError):
                pass                          # judge() will say that the judge is gone

    def judge(self, source: Path, autograded: Path) -> List[dict]:
        """Verdicts for one autograded notebook; ``RuntimeError`` when the judge could not."""
        with self.lock:
            try:
                self.proc.stdin.write(json.dumps({"source": str(source),
                                                  "autograded": str(autograded)}) + "\n")
                self.proc.stdin.flush()
                line = self.proc.stdout.readline()
            except (OSError, ValueError) as e:
                raise RuntimeError(f"the judge is gone ({e})") from None
        if not line:
            raise RuntimeError("the judge ended: " + "".join(self.stderr[-5:])[-500:])
        answer = json.loads(line)
        if "error" in answer:
            raise RuntimeError(f"the judge could not judge {autograded.name}: {answer['error']}")
        return answer["verdicts"]

    def close(self):
        try:
            self.proc.stdin.close()
        except OSError:
            pass
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


# ----------------------------------------------------------------------------- results

def record(gradebook: Path, assignment: str, student: str, notebook: str,
           verdicts: List[dict]) -> float:
    """Write each test cell's score into the gradebook; returns the notebook's total."""
    import warnings

    from nbgrader.api import Gradebook, MissingEntry

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with Gradebook(f"sqlite:///{gradebook}") as gb:
            by_id = {v["grade_id"]: v for v in verdicts}
            sub = gb.find_submission_notebook(notebook, assignment, student)
            for g in sub.grades:
                v = by_id.get(g.name)
                if g.cell_type != "code":
                    continue
                g.auto_score = float(v["score"]) if v else 0.0
                g.manual_score = None
                g.needs_manual_grade = False
            for c in sub.comments:
                v = by_id.get(c.name)
                if v is not None:
                    c.auto_comment = v["message"] or "passed"
            gb.db.commit()
            try:
                return float(gb.find_submission(assignment, student).score)
            except MissingEntry:  # pragma: no cover
                return 0.0


def feedback_notebook(autograded: nbformat.NotebookNode, verdicts: List[dict],
                      strip) -> nbformat.NotebookNode:
    """The autograded notebook as feedback may show it: the learner's sources, the release's
    text of each test cell (``strip`` removes hidden tests) with its verdict, and no output of
    the kernel at all. (Outputs of the cells before the first test would be allowed, but a
    student's sandbox is shared by their notebooks, so one lesson's early cells could print
    what another lesson's hidden tests showed the kernel.)"""
    nb = copy.deepcopy(autograded)
    by_id = {v["grade_id"]: v for v in verdicts}
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        meta = _meta(cell)
        if meta.get("grade"):
            cell.source = strip(cell.source)
            v = by_id.get(meta.get("grade_id"))
            if v is None:
                cell.outputs = []
            elif v["passed"]:
                cell.outputs = [nbformat.v4.new_output(
                    "stream", name="stdout", text=f"PASS  {v['score']:g}/{v['points']:g}\n")]
            else:
                cell.outputs = [nbformat.v4.new_output(
                    "error", ename="Failed", evalue=f"0/{v['points']:g}: {v['message']}",
                    traceback=[f"FAIL  0/{v['points']:g}", v["message"]])]
        else:
            cell.outputs = []
        cell.execution_count = None
    return nb


def apply(course: Path, assignment: str, student: str, notebook: str, source: Path,
          client: Client) -> tuple:
    """Judge ``course/autograded/student/assignment/notebook`` against the instructor's
    ``source``, write the scores into ``course``'s gradebook and the verdicts to
    ``course/grading/verdicts/<student>/<assignment>.json``, where feedback is made from
    (``autograder.grade.SanitizeFeedback``). The autograded notebook stays as the kernel left it,
    for the instructor. Returns ``(score, verdicts)``."""
    path = course / "autograded" / student / assignment / notebook
    verdicts = client.judge(source, path)
    score = record(course / "gradebook.db", assignment, student, Path(notebook).stem, verdicts)
    folder = course / "grading" / "verdicts" / student
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{assignment}.json").write_text(json.dumps(verdicts, indent=1))
    return score, verdicts


if __name__ == "__main__":
    sys.exit(serve())
