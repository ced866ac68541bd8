import itertools
import math

import torch
from corsa.fairkl import FairKL, fairkl, gaussian_kl


def reference_fairkl(feats, labels, bias, eps=1e-4):
    """Float64 loops over ordered pairs, Gaussian KL written out from the densities' closed form."""
    z = [[v / math.sqrt(sum(u * u for u in f)) for v in f] for f in feats.tolist()]
    groups = {(True, True): [], (True, False): [], (False, True): [], (False, False): []}
    for i, j in itertools.permutations(range(len(z)), 2):
        d = sum((a - b) ** 2 for a, b in zip(z[i], z[j]))
        groups[(labels[i] == labels[j], bias[i] == bias[j])].append(d)
    total = 0.0
    for pos in (True, False):
        a, c = groups[(pos, True)], groups[(pos, False)]
        if not a or not c:
            continue
        ma, mc = sum(a) / len(a), sum(c) / len(c)
        va = sum((x - ma) ** 2 for x in a) / len(a) + eps
        vc = sum((x - mc) ** 2 for x in c) / len(c) + eps
        total += math.log(math.sqrt(vc) / math.sqrt(va)) + (va + (ma - mc) ** 2) / (2 * vc) - 0.5
    return total


def test_fairkl_matches_pairwise_loop():
    torch.manual_seed(0)
    feats = torch.randn(9, 5, dtype=torch.float64)
    labels = torch.tensor([0, 0, 1, 1, 0, 1, 0, 1, 1])
    bias = torch.tensor([0, 1, 0, 2, 2, 1, 0, 0, 1])
    got = fairkl(feats, labels, bias).item()
    assert abs(got - reference_fairkl(feats, labels.tolist(), bias.tolist())) < 1e-10


def test_gaussian_kl_against_numerical_integral():
    m1, v1, m2, v2 = 0.3, 0.5, -0.2, 1.7
    x = torch.linspace(-20, 20, 200001, dtype=torch.float64)
    p = torch.exp(-((x - m1) ** 2) / (2 * v1)) / math.sqrt(2 * math.pi * v1)
    q = torch.exp(-((x - m2) ** 2) / (2 * v2)) / math.sqrt(2 * math.pi * v2)
    numeric = torch.trapezoid(p * torch.log(p / q), x).item()
    closed = gaussian_kl(*(torch.tensor(v, dtype=torch.float64) for v in (m1, v1, m2, v2))).item()
    assert abs(numeric - closed) < 1e-8


def test_fairkl_gradient_by_finite_differences():
    torch.manual_seed(1)
    feats = torch.randn(8, 4, dtype=torch.float64, requires_grad=True)
    labels = torch.tensor([0, 1, 0, 1, 0, 1, 0, 1])
    bias = torch.tensor([0, 0, 1, 1, 0, 1, 1, 0])
    fairkl(feats, labels, bias).backward()
    h = 1e-6
    numeric = torch.zeros_like(feats)
    with torch.no_grad():
        for idx in itertools.product(range(8), range(4)):
            plus, minus = feats.clone(), feats.clone()
            plus[idx] += h
            minus[idx] -= h
            numeric[idx] = (fairkl(plus, labels, bias) - fairkl(minus, labels, bias)) / (2 * h)
    assert torch.allclose(feats.grad, numeric, atol=1e-6, rtol=1e-5)


def test_fairkl_zero_when_features_ignore_bias_and_large_when_they_cluster_by_bias():
    labels = torch.tensor([0, 0, 0, 1, 1, 1] * 2)
    bias = torch.tensor([0] * 6 + [1] * 6)
    # Features that depend on the label only: aligned and conflicting distances are identical sets.
    by_label = torch.nn.functional.one_hot(labels, 3).double() + 0.1
    assert abs(fairkl(by_label, labels, bias).item()) < 1e-12
    # Features that encode the hospital: aligned pairs are much closer than conflicting ones.
    torch.manual_seed(2)
    noise = 0.1 * torch.randn(12, 3, dtype=torch.float64)
    by_bias = torch.nn.functional.one_hot(bias, 3).double() + noise
    mixed = torch.nn.functional.one_hot(labels, 3).double() + noise
    assert fairkl(by_bias, labels, bias).item() > 10 * fairkl(mixed, labels, bias).item() > 0


def test_empty_sets_contribute_nothing_and_module_wraps_function():
    feats = torch.randn(4, 3)
    labels = torch.tensor([0, 0, 1, 1])
    one_hospital = torch.zeros(4, dtype=torch.long)
    assert fairkl(feats, labels, one_hospital).item() == 0.0
    bias = torch.tensor([0, 1, 0, 1])
    assert torch.equal(FairKL()(feats, labels, bias), fairkl(feats, labels, bias))
