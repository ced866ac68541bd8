"""The cue-conflict analogue (class-tied textures) and its wiring into ``test`` and the sweep."""

import pytorch_lightning as pl
import torch
from PIL import Image
from pruning_vision.alignment import error_consistency, shape_bias
from pruning_vision.data import (
    TEXTURES,
    CompositedDigits,
    ModelVsHumanFolder,
    ObjectsDataModule,
    composite,
    composited_digits,
    cue_conflict_digits,
)
from pruning_vision.lightning_module import PrunableClassifier
from pruning_vision.reproduce import consistency_with_dense
from reprokit.data import load_mnist5k
from torch.utils.data import DataLoader


def test_texture_choice_changes_the_background_only():
    digit = load_mnist5k()[0][0, 0]
    out = [composite(digit, torch.Generator().manual_seed(3), 32, k) for k in range(len(TEXTURES))]
    for image, mask, box in out[1:]:
        assert torch.equal(mask, out[0][1]) and torch.equal(box, out[0][2])
        # same digit, colour and place (the mask) on a different background; pixels inside the mask blend the
        # background by (1 - alpha) < 0.5, so they change at most half as much as the background can
        diff = (image - out[0][0]).abs()
        assert diff[:, ~mask].mean() > 0.01
        assert bool((diff[:, mask] <= 0.5 * 0.3 + 1e-6).all())


def test_default_data_unchanged_and_full_texture_bias_uses_the_class_texture():
    images, labels, masks, _ = composited_digits("train", 6)
    tied, tied_labels, tied_masks, _ = composited_digits("train", 6, texture_bias=1.0)
    assert torch.equal(labels, tied_labels) and torch.equal(masks, tied_masks)
    # Item i with bias 1 is item i's digit and placement on texture TEXTURES[label]: rebuild it by hand.
    digits, all_labels = load_mnist5k()
    from reprokit.data import stratified_split_indices

    pool = stratified_split_indices(all_labels, (0.6, 0.2, 0.2), 0)[0]
    for i in range(6):
        gen = torch.Generator().manual_seed(i)
        j = pool[int(torch.randint(len(pool), (1,), generator=gen))]
        assert int(all_labels[j]) == int(labels[i])
        image, _, _ = composite(digits[j, 0], gen, 32, int(labels[i]))
        assert torch.equal(image, tied[i])
        gen = torch.Generator().manual_seed(i)
        torch.randint(len(pool), (1,), generator=gen)
        assert torch.equal(composite(digits[j, 0], gen, 32)[0], images[i])


def test_cue_conflict_set_has_exact_and_conflicting_labels():
    images, shapes, textures = cue_conflict_digits(200)
    assert images.shape == (200, 3, 32, 32)
    assert bool((shapes != textures).all())
    assert set(textures.tolist()) == set(range(10)) and set(shapes.tolist()) == set(range(10))
    # the texture offset is uniform over the nine other classes
    assert set(((textures - shapes) % 10).tolist()) == set(range(1, 10))


def _trainer(tmp_path):
    return pl.Trainer(
        accelerator="cpu", default_root_dir=tmp_path, logger=False, enable_progress_bar=False,
        enable_model_summary=False, inference_mode=False,
    )  # fmt: skip


def test_test_logs_shape_bias_and_keeps_trials(tmp_path):
    torch.manual_seed(0)
    model = PrunableClassifier(
        arch="small_resnet", backbone_kwargs={"widths": [4, 8, 8]}, attribution=(), distortions={"greyscale": None}
    )
    dm = ObjectsDataModule(n_test=24, n_cue_conflict=40, eval_batch_size=16, texture_bias=0.8)
    _trainer(tmp_path).test(model, dm)
    logged = float(model.trainer.callback_metrics["test/shape_bias"])
    # independent recomputation: a plain forward pass over the cue-conflict set
    images, shapes, textures = cue_conflict_digits(40)
    model.eval()
    with torch.no_grad():
        pred = model(images).argmax(1)
    assert logged == shape_bias(pred, shapes, textures)
    assert torch.equal(model.trials["cue_conflict_pred"], pred)
    assert torch.equal(model.trials["cue_conflict"], pred == shapes)
    test_set = CompositedDigits("test", 24, texture_bias=0.8)
    with torch.no_grad():
        clean = model(test_set.images).argmax(1) == test_set.labels
    assert torch.equal(model.trials["clean"], clean) and model.trials["greyscale"].shape == (24,)
    acc = float(model.trainer.callback_metrics["test/acc"])
    assert acc == float(clean.float().mean())  # cue-conflict trials are not counted as labelled images


def test_error_consistency_with_dense_in_the_sweep():
    gen = torch.Generator().manual_seed(0)
    dense = {k: torch.rand(50, generator=gen) < 0.6 for k in ("clean", "contrast", "rotation", "cue_conflict")}
    dense["cue_conflict_pred"] = torch.zeros(50, dtype=torch.long)
    pruned = {k: torch.rand(50, generator=gen) < 0.6 for k in ("clean", "contrast", "rotation", "cue_conflict")}
    pruned["cue_conflict_pred"] = torch.zeros(50, dtype=torch.long)
    store: dict = {}
    first = consistency_with_dense(dense, store, True)
    assert all(v != v for v in first.values())  # NaN for the dense model itself
    out = consistency_with_dense(pruned, store, False)
    assert out["ec/clean"] == error_consistency(pruned["clean"], dense["clean"])
    assert out["ec/cue_conflict"] == error_consistency(pruned["cue_conflict"], dense["cue_conflict"])
    mean = (
        error_consistency(pruned["contrast"], dense["contrast"])
        + error_consistency(pruned["rotation"], dense["rotation"])
    ) / 2
    assert abs(out["ec/ood_mean"] - mean) < 1e-12


def test_toolbox_cue_conflict_folder_feeds_the_same_metric(tmp_path):
    # A miniature model-vs-human cue-conflict folder: <shape-class folder>/<shape><n>-<texture><m>.png
    names = [("cat", "cat1-elephant2"), ("cat", "cat2-clock1"), ("knife", "knife1-bear3"), ("boat", "boat1-boat2")]
    gen = torch.Generator().manual_seed(0)
    for folder, stem in names:
        (tmp_path / "cc" / folder).mkdir(parents=True, exist_ok=True)
        pixels = (torch.rand(40, 40, 3, generator=gen) * 255).to(torch.uint8).numpy()
        Image.fromarray(pixels).save(tmp_path / "cc" / folder / f"{stem}.png")
    data = ModelVsHumanFolder(tmp_path / "cc", size=32)
    torch.manual_seed(0)
    model = PrunableClassifier(
        arch="small_resnet", num_classes=16, backbone_kwargs={"widths": [4, 8, 8]}, attribution=(), distortions={}
    )
    _trainer(tmp_path).test(model, DataLoader(data, batch_size=3))
    shape = torch.tensor([data[i]["shape"] for i in range(len(data))])
    texture = torch.tensor([data[i]["texture"] for i in range(len(data))])
    assert torch.equal(model.trials["cue_conflict_shape"], shape)
    assert torch.equal(model.trials["cue_conflict_texture"], texture)
    model.eval()
    with torch.no_grad():
        pred = model(torch.stack([data[i]["image"] for i in range(len(data))])).argmax(1)
    differ = shape != texture  # boat-on-boat says nothing about the bias
    assert float(model.trainer.callback_metrics["test/shape_bias"]) == shape_bias(
        pred[differ], shape[differ], texture[differ]
    )


def test_decision_groups_pick_the_category_with_the_highest_mean_probability():
    model = PrunableClassifier(arch="small_resnet", num_classes=5, backbone_kwargs={"widths": [4, 4, 4]},
                               decision_groups=[[0, 1], [2, 3, 4]])  # fmt: skip
    logits = torch.log(torch.tensor([[0.30, 0.30, 0.40, 0.0001, 0.0001], [0.5, 0.0, 0.2, 0.2, 0.1]]) + 1e-9)
    # row 0: group means 0.30 vs 0.133 -> 0; the argmax (class 2) would be in group 1. row 1: 0.25 vs 0.167 -> 0
    assert model.decide(logits).tolist() == [0, 0]
