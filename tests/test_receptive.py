"""fpnlab.receptive measures receptive fields by back-propagation; here a second, independent
method (the textbook recurrence over the layers, written only in this test) must agree with it,
on random chains and on ResNet bodies of several depths and both places of the stride."""
import random

import pytest

from fpnlab.receptive import probe_body, probe_chain
from fpnlab.shapes import RESNET50_BLOCKS


def recurrence(layers):
    rf, jump = 1, 1
    for kernel, stride in layers:
        rf += (kernel - 1) * jump
        jump *= stride
    return rf, jump


def body_layers(stride_in_1x1, blocks, maxpool=True):
    """The longest path through a bottleneck ResNet as (kernel, stride) pairs, per stage."""
    stem = [(7, 2)] + ([(3, 2)] if maxpool else [])
    path, out = list(stem), {"stem": list(stem)}
    for i, count in enumerate(blocks):
        for j in range(count):
            s = 2 if (i > 0 and j == 0) else 1
            path += [(1, s), (3, 1), (1, 1)] if stride_in_1x1 else [(1, 1), (3, s), (1, 1)]
        out[f"C{i + 2}"] = list(path)
    return out


@pytest.mark.parametrize("seed", range(12))
def test_chain_probe_agrees_with_the_recurrence(seed):
    rng = random.Random(seed)
    layers = [(rng.randint(1, 7), rng.randint(1, 3)) for _ in range(rng.randint(1, 6))]
    assert probe_chain(layers) == recurrence(layers), layers


@pytest.mark.parametrize("blocks", [RESNET50_BLOCKS, (3, 4, 23, 3), (2, 2, 2, 2), (1, 1, 1, 1)])
@pytest.mark.parametrize("stride_in_1x1", [True, False])
def test_body_probe_agrees_with_the_longest_path(blocks, stride_in_1x1):
    got = probe_body(stride_in_1x1, blocks)
    want = {k: recurrence(v) for k, v in body_layers(stride_in_1x1, blocks).items()}
    assert got == want


def test_the_stride_in_the_1x1_widens_the_field_from_C3_on():
    msra, v15 = probe_body(True), probe_body(False)
    assert msra["C2"] == v15["C2"]
    for stage in ("C3", "C4", "C5"):
        assert msra[stage][0] > v15[stage][0] and msra[stage][1] == v15[stage][1]
    # a C5 position steps 32 px but sees far more than that
    assert v15["C5"][0] > 12 * v15["C5"][1]


def test_wrong_models_for_diagnostics():
    assert probe_body(maxpool=False) == {k: recurrence(v) for k, v in
                                         body_layers(True, RESNET50_BLOCKS, False).items()}
    flat = probe_body(strides=False)
    assert all(stride == 1 for _, stride in flat.values())
    assert flat == {k: recurrence([(kk, 1) for kk, _ in v])
                    for k, v in body_layers(True, RESNET50_BLOCKS).items()}
