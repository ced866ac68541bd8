import pytest
import torch
from saemnesia.hooks import ActivationStore, ActivationWriter, capture
from saemnesia.metrics import UnlearningAccuracy, auroc
from saemnesia.tiny_diffusion import SD_BLOCK, LocalTokenizer, TinyTextToImage, make_prompt
from torch import nn


class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.block = nn.Conv2d(2, 5, 1)

    def forward(self, x):
        return self.block(x)


def test_capture_keeps_conditional_half_as_tokens():
    net = _Net()
    x = torch.randn(6, 2, 3, 4)
    with capture(net, "block") as store:
        out = net(x)
    assert len(store) == 1 and store[0].shape == (3, 12, 5)
    assert torch.allclose(store[0], out[3:].permute(0, 2, 3, 1).reshape(3, 12, 5))


def test_capture_on_tiny_unet_block_shapes():
    model = TinyTextToImage().eval()
    ids = model.tokenizer([make_prompt("circle", "ember")] * 2)
    with capture(model.unet, SD_BLOCK) as store, torch.no_grad():
        model.unet(torch.randn(4, 3, 16, 16), torch.tensor(10), encoder_hidden_states=model.text(torch.cat([ids, ids])))
    assert store[0].shape == (2, 16 * 16, 32)  # B/2 conditional items, 16x16 tokens, 32 channels in up_blocks.1


def test_store_round_trip(tmp_path):
    writer = ActivationWriter(tmp_path / "s", chunk_items=3, label_names=("object", "style", "t"))
    acts = torch.randn(7, 4, 2)
    labels = torch.arange(21).view(7, 3)
    writer.append(acts[:5], labels[:5])
    writer.append(acts[5:], labels[5:])
    writer.close()
    store = ActivationStore(tmp_path / "s")
    assert len(store) == 7
    for i in range(7):
        a, lab = store[i]
        assert torch.allclose(a, acts[i].half().float()) and torch.equal(lab, labels[i])
    with pytest.raises(FileNotFoundError):
        ActivationStore(tmp_path)


def test_tokenizer():
    tok = LocalTokenizer()
    ids = tok([make_prompt("star", "moss"), make_prompt("ring"), ""])
    assert ids.shape == (3, 8) and ids[2].eq(0).all() and ids[0].ne(0).sum() == 8
    with pytest.raises(ValueError, match="vocabulary"):
        tok(["An image of a dragon."])


def test_unlearning_metrics_hand_case():
    m = UnlearningAccuracy(erased=[0])
    # 4 images of erased object 0: classifier still finds it once -> UA = 3/4
    # 4 images of other objects: 3 objects right, 2 styles right -> IRA = 0.75, CRA = 0.5
    obj_true = torch.tensor([0, 0, 0, 0, 1, 2, 3, 1])
    obj_pred = torch.tensor([0, 1, 2, 5, 1, 2, 3, 0])
    sty_true = torch.tensor([0, 1, 2, 3, 0, 1, 2, 3])
    sty_pred = torch.tensor([0, 1, 2, 3, 0, 1, 0, 0])
    m.update(obj_pred[:5], obj_true[:5], sty_pred[:5], sty_true[:5])
    m.update(obj_pred[5:], obj_true[5:], sty_pred[5:], sty_true[5:])
    out = m.compute()
    assert out["ua"] == pytest.approx(0.75) and out["ira"] == pytest.approx(0.75) and out["cra"] == pytest.approx(0.5)
    seq = UnlearningAccuracy(erased=[0, 1])
    seq.update(obj_pred, obj_true, sty_pred, sty_true)
    out = seq.compute()  # erased images: 0,0,0,0,1,1 -> correct 1 (first) + 1 (obj 1 at idx 4) -> UA = 1 - 2/6
    assert out["ua"] == pytest.approx(4 / 6) and out["ira"] == pytest.approx(1.0) and out["cra"] == pytest.approx(0.5)


def test_auroc_hand_case_with_ties():
    # positives 0.35, 0.8, 0.4; negatives 0.1, 0.4, 0.4. Pairs won: 0.35 -> 1, 0.8 -> 3, 0.4 -> 1 + two ties (1/2
    # each) = 2; AUROC = 6 / 9
    scores = torch.tensor([0.1, 0.4, 0.35, 0.8, 0.4, 0.4])
    positive = torch.tensor([0, 0, 1, 1, 1, 0])
    assert auroc(scores, positive) == pytest.approx(6 / 9)
    assert auroc(scores, 1 - positive) == pytest.approx(3 / 9)  # swapping the classes mirrors it
    assert auroc(torch.arange(4.0), torch.tensor([0, 0, 1, 1])) == 1.0
    assert auroc(torch.ones(4), torch.tensor([0, 1, 0, 1])) == 0.5  # all tied: chance


def test_latent_selectivity_on_a_hand_built_store(tmp_path):
    from saemnesia.reproduce import latent_selectivity
    from saemnesia.sae import TopKSAE

    sae = TopKSAE(2, 2, 1)
    with torch.no_grad():
        sae.W_enc.copy_(torch.eye(2))
        sae.b_enc.zero_()
        sae.b_dec.zero_()
    writer = ActivationWriter(tmp_path, chunk_items=3)
    # object 0 items: tokens along x (latent 0 fires); object 1 items: along y (latent 1 fires); 4 tokens each
    for o, scale in ((0, 1.0), (1, 2.0), (0, 3.0), (1, 0.5), (0, 0.2)):
        tokens = torch.zeros(1, 4, 2)
        tokens[0, :, o] = scale
        writer.append(tokens, torch.tensor([[o, 0, 0]]))
    store = ActivationStore(writer.close())
    items = torch.arange(5)
    assert latent_selectivity(sae, store, torch.tensor([0, 1]), items) == [1.0, 1.0]
    assert latent_selectivity(sae, store, torch.tensor([1, 0]), items) == [0.0, 0.0]  # swapped: anti-selective


def test_three_level_unet_reads_up_blocks_1_at_half_resolution():
    from saemnesia.tiny_diffusion import build_unet

    model = TinyTextToImage(channels=(32, 64, 64), attention_levels=(1,)).eval()
    ids = model.tokenizer([make_prompt("star")] * 2)
    with capture(model.unet, SD_BLOCK) as store, torch.no_grad():
        model.unet(torch.randn(4, 3, 16, 16), torch.tensor(10), encoder_hidden_states=model.text(torch.cat([ids, ids])))
    assert store[0].shape == (2, 8 * 8, 64)  # 8x8 tokens of the middle level's 64 channels
    assert model.unet.config.down_block_types == ("DownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D")
    with pytest.raises(ValueError, match=r"up_blocks\.1"):
        build_unet(channels=(32, 64, 64), attention_levels=(0,))  # up_blocks.1 would have no attention
