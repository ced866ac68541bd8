import itertools
import math

import pytest
import torch
from saemnesia.supervised import (
    concept_loss,
    concept_targets,
    decorrelation_loss,
    greedy_assignment,
    random_assignment,
    supervised_loss,
)


def test_greedy_assignment_hand_case():
    scores = torch.tensor([[0.9, 0.8, 0.1], [0.95, 0.2, 0.3]])
    # concept 0 first takes latent 0; concept 1 then takes its best free latent (2)
    assert greedy_assignment(scores).tolist() == [0, 2]
    # visiting concept 1 first changes the outcome
    assert greedy_assignment(scores, order=[1, 0]).tolist() == [1, 0]


def test_greedy_assignment_is_one_to_one_and_greedy_optimal():
    torch.manual_seed(0)
    scores = torch.rand(5, 7)
    got = greedy_assignment(scores)
    assert len(set(got.tolist())) == 5
    # brute force the greedy definition: each concept in order takes its best latent among the remaining ones
    free = set(range(7))
    for c in range(5):
        best = max(free, key=lambda j: scores[c, j].item())
        assert got[c] == best
        free.remove(best)
    with pytest.raises(ValueError):
        greedy_assignment(torch.rand(4, 3))


def test_random_assignment_distinct():
    a = random_assignment(10, 20, seed=3)
    assert len(set(a.tolist())) == 10 and torch.equal(a, random_assignment(10, 20, seed=3))


def test_concept_targets_and_masking():
    obj_lat, sty_lat = torch.tensor([4, 1]), torch.tensor([0, 6, 3])
    targets, mask = concept_targets(torch.tensor([1, 0]), torch.tensor([2, -1]), obj_lat, sty_lat, 8)
    assert targets.tolist() == [[0, 1, 0, 1, 0, 0, 0, 0], [0, 0, 0, 0, 1, 0, 0, 0]]
    assert mask.tolist() == [True, True, False, True, True, False, True, False]
    pooled = torch.randn(2, 8)
    loss = concept_loss(pooled, targets, mask)
    # unassigned latents (2, 5, 7) do not matter
    pooled2 = pooled.clone()
    pooled2[:, [2, 5, 7]] = 100.0
    assert torch.equal(loss, concept_loss(pooled2, targets, mask))
    # against a direct BCE formula on the assigned columns
    cols = [0, 1, 3, 4, 6]
    p, t = pooled[:, cols], targets[:, cols]
    ref = -(t * torch.log(torch.sigmoid(p)) + (1 - t) * torch.log(1 - torch.sigmoid(p))).mean()
    assert torch.isclose(loss, ref, atol=1e-6)


def test_decorrelation_matches_pearson_loop():
    torch.manual_seed(0)
    a, s = torch.randn(16, 3, dtype=torch.float64), torch.randn(16, 2, dtype=torch.float64)
    s[:, 0] = 2 * a[:, 1] + 0.1 * s[:, 0]
    ref = []
    for i, j in itertools.product(range(3), range(2)):
        ref.append(torch.corrcoef(torch.stack([a[:, i], s[:, j]]))[0, 1] ** 2)
    assert torch.isclose(decorrelation_loss(a, s), torch.stack(ref).mean(), atol=1e-8)


def test_supervised_loss_weights():
    torch.manual_seed(0)
    x, x_hat, pre = torch.randn(6, 4), torch.randn(6, 4), torch.randn(6, 10)
    obj_lat, sty_lat = torch.tensor([0, 1]), torch.tensor([2, 3])
    targets, mask = concept_targets(torch.tensor([0, 1, 0]), torch.tensor([1, 0, -1]), obj_lat, sty_lat, 10)
    parts = supervised_loss(x, x_hat, pre, 2, targets, mask, obj_lat, sty_lat, (1.0, 3.0, 0.01, 0.1))
    assert torch.isclose(
        parts["loss"], parts["mse"] + 3 * parts["concept"] + 0.01 * parts["l1"] + 0.1 * parts["decorrelation"]
    )
    assert torch.isclose(parts["l1"], pre.abs().mean())


def test_pre_pooling_hand_case_and_relu_pooling_dead_point():
    # 1 sample x 2 tokens, latents 0 (object, target 1) and 1 (style, target 0); latent 2 unassigned
    x = torch.zeros(2, 3)
    pre = torch.tensor([[-1.0, 2.0, 5.0], [-3.0, -4.0, 5.0]], requires_grad=True)
    targets, mask = concept_targets(torch.tensor([0]), torch.tensor([-1]), torch.tensor([0]), torch.tensor([1]), 3)
    args = (x, x, pre, 2, targets, mask, torch.tensor([0]), torch.tensor([1]), (0.0, 1.0, 0.0, 0.0))
    # "pre": logits are the token means (-2, -1); BCE = (softplus(2) + softplus(-1)) / 2, independent of latent 2
    pre_parts = supervised_loss(*args, pooling="pre")
    ref = (math.log1p(math.exp(2.0)) + math.log1p(math.exp(-1.0))) / 2
    assert pre_parts["concept"].item() == pytest.approx(ref)
    # "relu": pooled (0, 1); latent 0 is silent on every token, so its loss term is ln 2 and it gets no gradient
    relu_parts = supervised_loss(*args, pooling="relu")
    assert relu_parts["concept"].item() == pytest.approx((math.log(2.0) + math.log1p(math.exp(1.0))) / 2)
    (grad_relu,) = torch.autograd.grad(relu_parts["concept"], pre)
    assert torch.equal(grad_relu[:, 0], torch.zeros(2))
    (grad_pre,) = torch.autograd.grad(pre_parts["concept"], pre)
    assert bool((grad_pre[:, 0] < 0).all())  # target 1: pushed up on every token
    assert torch.equal(grad_pre[:, 2], torch.zeros(2))  # unassigned latent masked out
    with pytest.raises(ValueError, match="pooling"):
        supervised_loss(*args, pooling="max")
