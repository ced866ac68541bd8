import pytest
import torch
from saemnesia.classifiers import ToyClassifier
from saemnesia.lightning_module import SAEModule
from saemnesia.toyworld import grid_labels, render
from torch.nn import functional as F


def test_classifier_shapes_and_input_check():
    model = ToyClassifier(6, 4).eval()
    obj, sty = model(torch.rand(5, 3, 16, 16))
    assert obj.shape == (5, 6) and sty.shape == (5, 4)
    obj, _ = model(torch.rand(2, 3, 32, 32))  # larger images are pooled to the same 4 x 4 grid
    assert obj.shape == (2, 6)
    try:
        model(torch.rand(2, 1, 16, 16))
    except ValueError as err:
        assert "RGB" in str(err)
    else:
        raise AssertionError("a grey image must be refused")


def test_classifier_learns_toy_objects():
    # the first classifier (global pooling, no normalisation) stayed under 0.5 object accuracy on these images
    torch.manual_seed(0)
    objects, styles = grid_labels(8)  # 192 images
    images = render(objects, styles, 16, seed=3)
    model = ToyClassifier(6, 4)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(10):
        for i in torch.randperm(len(images), generator=torch.Generator().manual_seed(0)).split(32):
            obj, sty = model(images[i])
            loss = F.cross_entropy(obj, objects[i]) + F.cross_entropy(sty, styles[i])
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()
    with torch.no_grad():
        obj, sty = model(images)
    assert (obj.argmax(1) == objects).float().mean() > 0.9
    assert (sty.argmax(1) == styles).float().mean() > 0.9


def test_mean_token_matches_float64_mean():
    torch.manual_seed(0)
    module = SAEModule(d_in=4, expansion=2, k=2)
    batches = [(torch.randn(3, 5, 4) + 7.0, torch.zeros(3, 3, dtype=torch.long)) for _ in range(4)]
    ref = torch.cat([a.flatten(0, 1) for a, _ in batches[:3]]).double().mean(0)
    assert torch.allclose(module.mean_token(batches, max_batches=3).double(), ref, atol=1e-6)


def test_stage_keys_follow_their_inputs(tmp_path):
    from saemnesia.reproduce import _stage_key

    diff_cfg, sae_cfg = tmp_path / "diffusion.yaml", tmp_path / "sae.yaml"
    diff_cfg.write_text("a: 1\n")
    sae_cfg.write_text("b: 1\n")

    def chain():
        k_diff = _stage_key("", diff_cfg, 32)
        return k_diff, _stage_key(k_diff, sae_cfg, 20)

    before = chain()
    assert chain() == before  # deterministic
    sae_cfg.write_text("# a comment\nb:   1\n")
    assert chain() == before  # comments and layout do not invalidate the cache
    sae_cfg.write_text("b: 2\n")
    after_sae = chain()
    assert after_sae[0] == before[0] and after_sae[1] != before[1]  # downstream only
    diff_cfg.write_text("a: 2\n")
    assert chain()[1] != after_sae[1]  # an upstream edit reaches the downstream key
    assert _stage_key("", diff_cfg, 32) != _stage_key("", diff_cfg, 33)  # settings count too


def test_min_snr_weights_match_hand_formula():
    from saemnesia.lightning_module import TinyDiffusionModule

    module = TinyDiffusionModule(min_snr_gamma=5.0)
    t = torch.tensor([0, 300, 600, 999])
    abar = module.train_sched.alphas_cumprod[t].double()
    snr = abar / (1 - abar)
    expected = [min(float(s), 5.0) / float(s) for s in snr]
    assert module.loss_weights(t).tolist() == pytest.approx(expected, rel=1e-6)
    assert module.loss_weights(t)[0] < 0.01 and module.loss_weights(t)[-1] == 1.0  # low noise down-weighted
    assert torch.equal(TinyDiffusionModule().loss_weights(t), torch.ones(4))  # gamma 0: plain MSE
