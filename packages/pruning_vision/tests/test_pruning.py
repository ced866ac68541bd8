import copy

import pytest
import torch
from pruning_vision.models import SmallResNet, SmallViT
from pruning_vision.pruning import (
    add_masks,
    keep_count,
    magnitude_prune,
    make_permanent,
    measured_sparsity,
    prunable_layers,
    schedule,
    snip_prune,
    snip_scores,
)
from torch import nn
from torch.nn.utils import prune


def small_cnn() -> nn.Module:
    torch.manual_seed(0)
    return SmallResNet(10, widths=(4, 8, 8))


def masked(model, types=("Conv2d",)):
    layers = [m for _, m in prunable_layers(model, types)]
    add_masks(layers)
    return layers


def test_schedule_is_the_papers_ladder():
    # The fact sheet's sparsities (percent, one decimal): 20% of the remaining weights per round until 95%.
    paper = [20, 36, 48.8, 59.0, 67.2, 73.8, 79.0, 83.2, 86.6, 89.3, 91.4, 93.1, 94.5, 95.6]
    ladder = schedule(0.2, 0.95)
    assert ladder[0] == 0 and len(ladder) == 15
    assert [round(100 * s, 1) for s in ladder[1:]] == paper
    assert len(schedule(0.2, 0.9)) - 1 == 11 and schedule(0.2, 0.9)[-1] >= 0.9 > schedule(0.2, 0.9)[-2]


def test_magnitude_rounds_reach_the_schedule_exactly_and_never_regrow():
    model = small_cnn()
    layers = masked(model)
    n = sum(m.weight_orig.numel() for m in layers)
    previous = [torch.ones_like(m.weight_mask) for m in layers]
    for k, s in enumerate(schedule(0.2, 0.95)[1:], 1):
        got = magnitude_prune(layers, s)
        kept = sum(int(m.weight_mask.sum()) for m in layers)
        assert kept == n - round(s * n), k
        assert got == (n - kept) / n
        for old, m in zip(previous, layers):
            assert not bool((m.weight_mask > old).any()), "a pruned weight came back"
        previous = [m.weight_mask.clone() for m in layers]


def test_first_round_matches_torch_global_unstructured():
    model = small_cnn()
    reference = copy.deepcopy(model)
    layers = masked(model)
    ref_layers = [m for _, m in prunable_layers(reference, ("Conv2d",))]
    n = sum(m.weight.numel() for m in ref_layers)
    magnitude_prune(layers, 0.2)
    prune.global_unstructured(
        [(m, "weight") for m in ref_layers], pruning_method=prune.L1Unstructured, amount=n - keep_count(n, 0.2)
    )
    for m, r in zip(layers, ref_layers):
        assert torch.equal(m.weight_mask, r.weight_mask)


def test_pruned_set_is_the_smallest_magnitudes():
    model = small_cnn()
    weights = torch.cat([m.weight.detach().abs().flatten() for _, m in prunable_layers(model, ("Conv2d",))])
    layers = masked(model)
    magnitude_prune(layers, 0.5)
    masks = torch.cat([m.weight_mask.flatten() for m in layers]).bool()
    assert weights[~masks].max() <= weights[masks].min()


def test_masks_persist_through_optimizer_steps_and_checkpoints(tmp_path):
    model = small_cnn()
    layers = masked(model, ("Conv2d", "Linear"))
    magnitude_prune(layers, 0.6)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-2)
    x, y = torch.rand(8, 3, 16, 16), torch.randint(10, (8,))
    for _ in range(3):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    model(x)  # the forward pre-hook recomputes weight = weight_orig * mask
    for m in layers:
        assert bool((m.weight[m.weight_mask == 0] == 0).all())
    torch.save(model.state_dict(), tmp_path / "m.pt")
    fresh = SmallResNet(10, widths=(4, 8, 8))
    masked(fresh, ("Conv2d", "Linear"))
    fresh.load_state_dict(torch.load(tmp_path / "m.pt"))
    model.eval(), fresh.eval()
    assert torch.equal(fresh(x), model(x))
    fresh_layers = [m for _, m in prunable_layers(fresh, ("Conv2d", "Linear"))]
    assert measured_sparsity(fresh_layers) == measured_sparsity(layers)


def test_make_permanent_keeps_the_function_and_drops_masks():
    model = small_cnn().eval()
    layers = masked(model, ("Conv2d", "Linear"))
    magnitude_prune(layers, 0.7)
    x = torch.rand(2, 3, 16, 16)
    before = model(x)
    make_permanent(model)
    assert not any("mask" in k or "orig" in k for k in model.state_dict())
    assert torch.equal(model(x), before)
    w = torch.cat([m.weight.flatten() for _, m in prunable_layers(model, ("Conv2d", "Linear"))])
    assert int((w == 0).sum()) >= round(0.7 * w.numel())


def test_snip_scores_match_plain_autograd_and_prune_the_lowest():
    model = small_cnn()
    plain = copy.deepcopy(model)  # no masks: the textbook |w * dL/dw|
    x, y = torch.rand(6, 3, 16, 16), torch.randint(10, (6,))
    nn.functional.cross_entropy(plain(x), y).backward()
    expected = [(m.weight * m.weight.grad).abs() for _, m in prunable_layers(plain, ("Conv2d",))]
    layers = masked(model)
    loss = lambda logits: nn.functional.cross_entropy(logits, y)  # noqa: E731
    for got, want in zip(snip_scores(model, layers, loss, x), expected):
        torch.testing.assert_close(got, want)
    snip_prune(model, layers, loss, x, 0.9)
    n = sum(m.weight_mask.numel() for m in layers)
    assert sum(int(m.weight_mask.sum()) for m in layers) == keep_count(n, 0.9)
    scores = torch.cat([e.flatten() for e in expected])
    kept = torch.cat([m.weight_mask.flatten() for m in layers]).bool()
    assert scores[~kept].max() <= scores[kept].min()


def test_vit_linear_only_pruning_leaves_patch_embedding_dense():
    torch.manual_seed(0)
    vit = SmallViT(10, 16, 4, dim=16, depth=2, heads=2)
    layers = masked(vit, ("Linear",))
    magnitude_prune(layers, 0.5)
    assert not hasattr(vit.patch, "weight_mask")
    assert measured_sparsity(layers) == pytest.approx(0.5, abs=1e-3)
