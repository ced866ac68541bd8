import numpy as np
import pytest
import torch
from medsae.encoder import (
    ActivationStore,
    EmbeddingDataset,
    MedCLIPVisionEncoder,
    SmallCXREncoder,
    collate_batch,
    load_medclip_weights,
    normalisation_stats,
)


def test_medclip_encoder_shape_and_weight_loading(tmp_path):
    torch.manual_seed(0)
    src = MedCLIPVisionEncoder()
    assert src.model.fc.bias is None and src.model.fc.out_features == 512
    # A checkpoint laid out like MedCLIP's pytorch_model.bin: the whole CLIP model, text tower included.
    full = {f"vision_model.{k}": v for k, v in src.state_dict().items()}
    full["text_model.model.embeddings.position_ids"] = torch.arange(77)[None]
    full["logit_scale"] = torch.tensor(4.6)
    torch.save(full, tmp_path / "pytorch_model.bin")
    dst = load_medclip_weights(MedCLIPVisionEncoder(), tmp_path / "pytorch_model.bin")
    for k, v in src.state_dict().items():
        assert torch.equal(dst.state_dict()[k], v), k
    dst.eval()
    z = dst(torch.rand(2, 1, 64, 64))
    assert z.shape == (2, 512) and torch.allclose(z.norm(dim=1), torch.ones(2), atol=1e-5)
    torch.save({"text_model.x": torch.zeros(1)}, tmp_path / "bad.bin")
    with pytest.raises(ValueError, match="lacks MedCLIP vision weights"):
        load_medclip_weights(MedCLIPVisionEncoder(), tmp_path / "bad.bin")
    with pytest.raises(FileNotFoundError):
        load_medclip_weights(MedCLIPVisionEncoder(), tmp_path / "missing.bin")


def test_small_encoder_is_normalised():
    z = SmallCXREncoder(16, width=4).eval()(torch.rand(3, 1, 32, 32))
    assert z.shape == (3, 16) and torch.allclose(z.norm(dim=1), torch.ones(3), atol=1e-5)


def test_normalisation_gives_mean_squared_norm_d():
    x = torch.randn(500, 8) * 0.1 + 3.0
    mean, scale = normalisation_stats(x)
    z = (x - mean) * scale
    assert torch.allclose(z.mean(0), torch.zeros(8), atol=1e-4)
    assert z.pow(2).sum(1).mean().item() == pytest.approx(8.0, rel=1e-4)


def test_activation_store_roundtrip_and_batched_reads(tmp_path):
    emb = torch.randn(10, 3)
    lab = (torch.rand(10, 2) < 0.5).float()
    chunks = [(emb[i : i + 4], lab[i : i + 4]) for i in range(0, 10, 4)]
    store = ActivationStore(tmp_path / "s").write(iter(chunks), 10, 3, 2, {"labels": ["a", "b"]})
    assert store.complete and store.meta()["labels"] == ["a", "b"]
    assert isinstance(store.embeddings(), np.memmap)
    assert np.array_equal(store.embeddings(), emb.numpy()) and np.array_equal(store.labels(), lab.numpy())
    rows = torch.tensor([7, 2, 9, 0])
    ds = EmbeddingDataset(store, rows, torch.ones(3), 2.0)
    batch = collate_batch(ds.__getitems__([0, 1, 2, 3]))
    assert torch.allclose(batch["x"], (emb[rows] - 1) * 2) and torch.equal(batch["y"], lab[rows])
    assert batch["index"].tolist() == [7, 2, 9, 0]
    with pytest.raises(ValueError, match="announced 11"):
        ActivationStore(tmp_path / "t").write(iter(chunks), 11, 3, 2)
    assert not ActivationStore(tmp_path / "t").complete


def test_hf_clip_image_encoder_from_a_local_tiny_model(tmp_path):
    import transformers
    from medsae.data import build_encoder

    config = transformers.CLIPConfig(
        text_config={"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2},
        vision_config={
            "hidden_size": 16,
            "intermediate_size": 32,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "image_size": 32,
            "patch_size": 8,
        },
        projection_dim=12,
    )
    transformers.CLIPModel(config).save_pretrained(tmp_path / "tiny-clip")
    enc = build_encoder("hf", str(tmp_path / "tiny-clip"), embed_dim=12, seed=0)
    with torch.no_grad():
        z = enc(torch.rand(3, 1, 32, 32))
    assert z.shape == (3, 12) and torch.allclose(z.norm(dim=1), torch.ones(3), atol=1e-5)
    with pytest.raises(ValueError, match="needs encoder_ckpt"):
        build_encoder("hf", None, 12, 0)
