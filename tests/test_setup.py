"""Setup files agree: pyproject.toml declares version ranges, requirements.txt pins one exact set
inside them (the lock `make setup` installs), environment.yml installs that same lock, and the
venv holds what the lock says."""
import importlib.metadata as md
import re
import tomllib
from pathlib import Path

import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parent.parent


def pins() -> dict:
    out = {}
    for line in (ROOT / "requirements.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            m = re.fullmatch(r"([A-Za-z0-9_.\-]+)==([\w.+]+)", line)
            assert m, f"requirements.txt: {line!r} is not an exact pin"
            out[canonicalize_name(m.group(1))] = m.group(2)
    return out


def declared() -> dict:
    """name -> (Requirement, where) for the dependencies and every extra of pyproject.toml."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    out = {}
    groups = {"dependencies": project["dependencies"], **{
        f"[{k}]": v for k, v in project.get("optional-dependencies", {}).items()}}
    for where, items in groups.items():
        for item in items:
            req = Requirement(item)
            out[canonicalize_name(req.name)] = (req, where)
    return out


def test_every_declared_dependency_is_a_range_the_lock_satisfies():
    lock = pins()
    for name, (req, where) in declared().items():
        assert req.specifier, f"pyproject {where}: {name} has no version range"
        assert not any(s.operator in ("==", "===") for s in req.specifier), \
            f"pyproject {where}: {req} is a pin, not a range (pins live in requirements.txt)"
        assert name in lock, f"pyproject {where}: {name} is declared but requirements.txt pins no version"
        assert req.specifier.contains(Version(lock[name]), prereleases=True), \
            f"requirements.txt pins {name}=={lock[name]}, outside pyproject's {req.specifier}"


def test_the_lock_pins_nothing_pyproject_does_not_declare():
    extra = set(pins()) - set(declared())
    assert not extra, f"requirements.txt pins {sorted(extra)}, which pyproject.toml does not declare"


def test_learner_dependencies_hold_no_grading_tool():
    core = {canonicalize_name(Requirement(d).name)
            for d in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]}
    assert "torch" in core and "nbgrader" not in core


def test_the_venv_holds_the_lock():
    """What `make setup` installed is what requirements.txt says (a stale venv fails here)."""
    wrong = {}
    for name, version in pins().items():
        try:
            have = md.version(name)
        except md.PackageNotFoundError:
            have = None
        if have is None or Version(have) != Version(version):
            wrong[name] = (version, have)
    assert not wrong, f"pinned (wanted, installed): {wrong}"


def test_environment_yml_installs_the_same_pins_and_the_package():
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    assert "conda-forge" in env["channels"]
    deps = env["dependencies"]
    python = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["requires-python"]
    conda_python = next(d for d in deps if isinstance(d, str) and d.startswith("python="))
    from packaging.specifiers import SpecifierSet
    assert SpecifierSet(python).contains(conda_python.split("=", 1)[1] + ".0")
    pip = next(d["pip"] for d in deps if isinstance(d, dict) and "pip" in d)
    assert [i for i in pip if i.startswith("-r")] and all(
        (ROOT / i[2:].strip()).resolve() == (ROOT / "requirements.txt").resolve()
        for i in pip if i.startswith("-r"))
    assert not [i for i in pip if "==" in i], "environment.yml pins on its own"
    assert any(i.startswith("-e") and i[2:].strip().startswith(".") for i in pip)


def test_the_console_script_runs_the_cli_and_the_trace_ships_as_package_data():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert project["project"]["scripts"]["fpnlab"] == "fpnlab.cli:main"
    data = project["tool"]["setuptools"]["package-data"]["fpnlab"]
    trace = ROOT / "fpnlab" / "data" / "resnet_fpn_p3p7_trace.txt"
    assert trace.exists() and any(trace.relative_to(ROOT / "fpnlab").match(g) for g in data)


def test_ci_runs_the_readme_test_command():
    assert re.search(r"^make test\s*$", (ROOT / ".ci" / "run").read_text(), re.M)
    readme = (ROOT / "README.md").read_text()
    assert "make test" in readme and "make lab" in readme
