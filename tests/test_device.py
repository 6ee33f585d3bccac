"""fpnlab.device: the one device helper every notebook and command uses."""
import random

import numpy as np
import pytest
import torch

from fpnlab import device as D


@pytest.fixture
def gpu(monkeypatch):
    """Pretend torch sees a CUDA GPU (no CUDA call is made: only the choice is tested)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.delenv("FPNLAB_DEVICE", raising=False)


@pytest.fixture
def no_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.delenv("FPNLAB_DEVICE", raising=False)


def test_auto_takes_cuda_when_there_is_one(gpu):
    assert D.device() == torch.device("cuda") and D.device("auto") == torch.device("cuda")
    assert D.device("cpu") == torch.device("cpu")


def test_auto_falls_back_to_the_cpu(no_gpu):
    assert D.device() == torch.device("cpu") and D.device("AUTO") == torch.device("cpu")


def test_the_environment_forces_the_cpu_for_a_whole_run(gpu, monkeypatch):
    monkeypatch.setenv("FPNLAB_DEVICE", "cpu")
    assert D.device() == torch.device("cpu")
    assert D.device("cuda") == torch.device("cuda")            # an explicit choice still wins


def test_cuda_without_a_gpu_and_a_bad_name_are_clear_errors(no_gpu, monkeypatch):
    with pytest.raises(RuntimeError, match="sees no CUDA GPU"):
        D.device("cuda")
    with pytest.raises(ValueError, match="auto, cpu or cuda, got 'tpu'"):
        D.device("tpu")
    monkeypatch.setenv("FPNLAB_DEVICE", "gpu")
    with pytest.raises(ValueError, match="got 'gpu'"):
        D.device()


def test_seed_everything_repeats_python_numpy_and_torch():
    def draw():
        return random.random(), float(np.random.rand()), float(torch.rand(1))

    D.seed_everything(3)
    first = draw()
    D.seed_everything(3)
    assert draw() == first
    D.seed_everything(4)
    assert draw() != first


def test_notebook_setup_prints_one_banner_and_returns_the_device(no_gpu, capsys):
    from fpnlab import __version__

    dev = D.notebook_setup(seed=1)
    out = capsys.readouterr().out
    assert dev == torch.device("cpu")
    assert out.count("\n") == 1 and f"fpnlab {__version__}" in out and "device: cpu (" in out
    assert "seed 1" in out and torch.__version__ in out
