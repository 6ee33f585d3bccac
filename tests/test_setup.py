"""Setup files agree: one place pins versions; environment.yml installs that same list."""
import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent


def pins():
    out = {}
    for line in (ROOT / "requirements.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            m = re.fullmatch(r"([A-Za-z0-9_.\-]+)==([\w.+]+)", line)
            assert m, f"requirements.txt: {line!r} is not an exact pin"
            out[m.group(1).lower()] = m.group(2)
    return out


def test_requirements_are_exact_pins_of_the_course_stack():
    p = pins()
    assert p["torch"] == "2.14.1" and p["torchvision"] == "0.29.1" and p["nbgrader"] == "0.9.6"
    for name in ("jupyterlab", "notebook", "ipywidgets", "matplotlib", "nbclient", "nbformat",
                 "onnx", "onnxruntime", "pytest", "playwright"):
        assert name in p, name


def test_environment_yml_installs_the_same_pins_and_the_package():
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    assert "conda-forge" in env["channels"]
    deps = env["dependencies"]
    assert "python=3.11" in deps
    pip = next(d["pip"] for d in deps if isinstance(d, dict) and "pip" in d)
    explicit = {}
    for item in pip:
        if item.startswith("-r"):
            assert (ROOT / item[2:].strip()).resolve() == (ROOT / "requirements.txt").resolve()
        elif item.startswith("-e"):
            assert item[2:].strip() == "."
        else:
            name, _, version = item.partition("==")
            explicit[name.lower()] = version
    assert any(i.startswith("-r") for i in pip) or explicit == pins()
    assert all(pins().get(k) == v for k, v in explicit.items()), "environment.yml pins differ"
    assert any(i.startswith("-e") for i in pip)


def test_pyproject_declares_the_console_script_and_the_trace_data():
    text = (ROOT / "pyproject.toml").read_text()
    assert 'fpnlab = "fpnlab.cli:main"' in text
    assert (ROOT / "fpnlab" / "data" / "resnet_fpn_p3p7_trace.txt").exists()


def test_ci_runs_the_readme_test_command():
    assert "make test" in (ROOT / ".ci" / "run").read_text()
    assert "make test" in (ROOT / "README.md").read_text()
    assert "make lab" in (ROOT / "README.md").read_text()
