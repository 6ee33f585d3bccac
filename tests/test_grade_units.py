"""Parts of the grader that need no kernel: the zip's size cap, the chunking of a class into
nbgrader runs, and the warm zygote's exit when nobody asks it for a kernel."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

from autograder import grade as G
from autograder import sandbox

ROOT = Path(__file__).resolve().parent.parent


def test_a_zip_that_unpacks_past_the_cap_is_refused_whole(tmp_path, monkeypatch):
    monkeypatch.setattr(G, "MAX_ZIP", 1000)   # bytes
    small, big = tmp_path / "small.zip", tmp_path / "big.zip"
    with zipfile.ZipFile(small, "w") as z:
        z.writestr("ann_00-toy.ipynb", "x" * 600)
        z.writestr("bob_00-toy.ipynb", "x" * 399)
    with zipfile.ZipFile(big, "w", compression=zipfile.ZIP_DEFLATED) as z:
        z.writestr("ann_00-toy.ipynb", "x" * 600)
        z.writestr("bob_00-toy.ipynb", "x" * 401)           # 1001 bytes unpacked, a few zipped
    inbox = G.unpack_zip(small, tmp_path / "in-small")
    assert sorted(p.name for p in inbox.rglob("*.ipynb")) == ["ann_00-toy.ipynb", "bob_00-toy.ipynb"]
    assert big.stat().st_size < 1000
    with pytest.raises(G.UsageError, match="unpacks to more than"):
        G.unpack_zip(big, tmp_path / "in-big")
    assert not list((tmp_path / "in-big").rglob("*.ipynb"))          # nothing unpacked


def _jobs(spec: str):
    """'a a b c d' -> Jobs in that order (a student named twice has two lessons)."""
    seen = {}
    out = []
    for sid in spec.split():
        seen[sid] = seen.get(sid, 0) + 1
        out.append(G.Job(sid, f"lesson-{seen[sid]}"))
    return out


@pytest.mark.parametrize("spec,size,expected", [
    ("a b c d e", 2, [["a", "b"], ["c", "d"], ["e"]]),
    ("a b c", 8, [["a", "b", "c"]]),
    ("a x x x b c", 2, [["a"], ["x", "x", "x"], ["b", "c"]]),        # x: a chunk of their own
    ("x x", 8, [["x", "x"]]),
    ("", 8, []),
])
def test_chunks_keep_a_students_notebooks_together_and_cap_the_rest(spec, size, expected):
    jobs = _jobs(spec)
    chunks = list(G._chunks(jobs, size))
    assert [[j.student_id for j in c] for c in chunks] == expected
    assert [j for c in chunks for j in c] == jobs                      # each once, in order
    for c in chunks:
        ids = {j.student_id for j in c}
        assert len(c) <= size or len(ids) == 1


def test_the_warm_zygote_leaves_by_itself_when_idle(tmp_path):
    """Nobody asks for a kernel: after `idle` seconds it closes its socket and exits 0."""
    path = str(tmp_path / "warm.sock")
    code = ("import socket, sys\nfrom autograder import warmkernel\n"
            f"s = socket.socket(socket.AF_UNIX); s.bind({path!r}); s.listen()\n"
            "sys.exit(warmkernel.serve(s.detach(), idle=1.0))")
    env = dict(os.environ, **{var: "1" for var in sandbox.THREAD_VARS})
    proc = subprocess.Popen([sys.executable, "-c", code], env=env, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not os.path.exists(path):
            assert proc.poll() is None, proc.stderr.read()
            assert time.monotonic() < deadline
            time.sleep(0.1)
        listening_at = time.monotonic()
        assert proc.wait(timeout=120) == 0, proc.stderr.read()
        assert time.monotonic() - listening_at >= 1.0            # it waited its idle time first
        with pytest.raises(OSError):                              # and nobody listens any more
            with socket.socket(socket.AF_UNIX) as c:
                c.connect(path)
    finally:
        if proc.poll() is None:
            proc.kill()
