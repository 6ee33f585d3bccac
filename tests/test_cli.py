"""The fpnlab command line, run as a learner runs it (a real subprocess)."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from fpnlab.reference import reference, reference_shapes
from fpnlab.shapes import Config, stage_shapes

FPNLAB = [sys.executable, "-m", "fpnlab.cli"]


def run(*args, **kw):
    return subprocess.run([*FPNLAB, *args], capture_output=True, text=True, **kw)


def test_shapes_json_is_the_reference_at_the_trace_size():
    h, w = reference_shapes()["image"][1:]
    p = run("shapes", "--height", str(h), "--width", str(w), "--json")
    assert p.returncode == 0, p.stderr
    got = json.loads(p.stdout)
    assert {k: tuple(v) for k, v in got.items()} == reference_shapes()
    assert list(got) == list(reference_shapes())          # canonical order


def test_shapes_options_reach_the_engine():
    p = run("shapes", "--height", "700", "--width", "300", "--min-size", "800", "--max-size", "1000",
            "--size-divisible", "64", "--out-channels", "256", "--json")
    assert p.returncode == 0, p.stderr
    want = stage_shapes(700, 300, Config(min_size=800, max_size=1000, size_divisible=64,
                                         out_channels=256))
    assert {k: tuple(v) for k, v in json.loads(p.stdout).items()} == want


def test_shapes_table_shows_strides():
    p = run("shapes", "--height", "438", "--width", "512")
    assert p.returncode == 0
    lines = {line.split()[0]: line.split() for line in p.stdout.splitlines()}
    assert lines["P7"][1:] == ["1x1024x4x5", "128"]
    assert lines["C3"][1:] == ["1x512x60x72", "8"]


def test_impossible_addition_exits_2_with_one_line_naming_the_level():
    p = run("shapes", "--height", "438", "--width", "512", "--size-divisible", "0")
    assert p.returncode == 2
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and "P3" in lines[0] and "60x72" in lines[0] and "60x71" in lines[0]
    assert p.stdout == ""


@pytest.mark.parametrize("args,word", [
    (["--height", "0", "--width", "5"], "positive"),
    (["--height", "-4", "--width", "5"], "positive"),
    (["--height", "abc", "--width", "5"], "not a whole number"),
    (["--height", "10"], "--width"),
    (["--height", "10", "--width", "10", "--size-divisible", "-1"], "size-divisible"),
])
def test_bad_arguments_exit_2_with_a_message(args, word):
    p = run("shapes", *args)
    assert p.returncode == 2
    assert word in p.stderr


def test_shapes_does_not_import_torch():
    h, w = reference_shapes()["image"][1:]
    code = ("import sys; from fpnlab.cli import main; "
            f"main(['shapes', '--height', '{h}', '--width', '{w}', '--json']); "
            "assert 'torch' not in sys.modules, 'torch imported'")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr


@pytest.mark.parametrize("command", [[], ["shapes"], ["trace"], ["check"], ["lessons"], ["grade"]])
def test_help_is_plain_text_that_says_what_the_command_does(command):
    """--help of every command: exit 0, a description, no reStructuredText markup."""
    p = run(*command, "--help")
    assert p.returncode == 0, p.stderr
    text = p.stdout
    assert text.startswith(f"usage: fpnlab{' ' + command[0] if command else ''}")
    assert "``" not in text and ":mod:" not in text and ":func:" not in text
    description = text.split("\n\n")[1]
    assert len(description.split()) >= 5, description


@pytest.mark.slow
def test_trace_runs_the_real_model_and_matches_the_reference():
    p = run("trace", "--device", "cpu", "--diff")
    assert p.returncode == 0, p.stderr
    ref = reference()
    for stage, shape in {**ref.shapes, **ref.internals}.items():
        line = next(line for line in p.stdout.splitlines() if line.split()[:1] == [stage])
        assert line.endswith("x".join(map(str, shape))), line
    assert "matches the reference trace" in p.stdout
    assert p.stdout.index("P3 ") < p.stdout.index("P7 ")


def test_trace_diff_fails_at_the_first_differing_stage(monkeypatch, capsys):
    from fpnlab import cli
    from fpnlab.tracing import Trace

    good = Trace.from_shapes({**reference().shapes, **reference().internals})
    n, c, h, w = good.shapes()["C4"]
    bad = Trace.from_shapes({k: (v if k != "C4" else (n, c, h, w - 1)) for k, v in good.shapes().items()})
    monkeypatch.setattr(cli, "run_trace", lambda device: (bad, "cpu"))
    assert cli.main(["trace", "--diff"]) == 1
    err = capsys.readouterr().err
    assert "C4" in err and f"{h}x{w}" in err and f"{h}x{w - 1}" in err


def test_trace_on_cuda_without_a_gpu_is_a_clear_error():
    import torch
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    p = run("trace", "--device", "cuda")
    assert p.returncode == 2 and "CUDA" in p.stderr
