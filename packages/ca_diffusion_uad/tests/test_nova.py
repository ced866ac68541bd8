import csv

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from ca_diffusion_uad.data import NovaDataModule, parse_nova_boxes, read_nova
from ca_diffusion_uad.lightning_module import ReconstructionUAD
from PIL import Image
from reprokit.data import DatasetNotFoundError

# A 80 x 40 (W x H) slice: zero-padded to 80 x 80 (20 rows above), then resized to 40 px (factor 1/2).
# Gold box x=16, y=8, w=24, h=12 -> (16, 8, 40, 20) -> shifted to (16, 28, 40, 40) -> halved: (8, 14, 20, 20).
BOX_1 = "{'x': [16.0], 'y': [8.0], 'width': [24.0], 'height': [12.0]}"
EXPECTED_1 = [8.0, 14.0, 20.0, 20.0]
# Second T2 image: the gold box is elsewhere than its bright patch (a miss at any IoU threshold).
BOX_2 = "{'x': [56.0], 'y': [24.0], 'width': [16.0], 'height': [10.0]}"
EXPECTED_2 = [28.0, 22.0, 36.0, 27.0]


def write_nova(root, rows):
    (root / "images").mkdir(parents=True)
    with open(root / "NOVA_metadata.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["filename", "caption", "case_id", "bbox_gold", "bbox_raters"])
        w.writeheader()
        for name, caption, box, patch, value in rows:
            img = np.full((40, 80), 0.3 * 255, dtype=np.float64)  # "head" everywhere in the stored slice
            y0, y1, x0, x1 = patch
            img[y0:y1, x0:x1] = value * 255
            Image.fromarray(img.round().astype(np.uint8), mode="L").save(root / "images" / name)
            w.writerow({"filename": name, "caption": caption, "case_id": name[:8], "bbox_gold": box, "bbox_raters": ""})


@pytest.fixture
def nova_dir(tmp_path):
    write_nova(
        tmp_path / "nova",
        [
            ("case0001_001.png", "Axial T2, a lesion, with commas", BOX_1, (8, 20, 16, 40), 1.0),
            ("case0002_001.png", "Axial T1 post-contrast", BOX_1, (8, 20, 16, 40), 1.0),
            ("case0003_001.png", "Coronal T2 FLAIR", BOX_2, (8, 20, 16, 40), 0.9),
        ],
    )
    return tmp_path / "nova"


def test_parse_nova_boxes_xywh_to_xyxy():
    boxes = parse_nova_boxes("{'x': [1.5, 10.0], 'y': [2.0, 0.0], 'width': [3.0, 4.0], 'height': [5.0, 6.0]}")
    assert boxes.tolist() == [[1.5, 2.0, 4.5, 7.0], [10.0, 0.0, 14.0, 6.0]]
    assert parse_nova_boxes("").shape == (0, 4)


def test_nova_loader_filters_t2_and_moves_boxes_with_the_image(nova_dir):
    items = read_nova(nova_dir, 40, caption_filter="T2")
    assert [it["name"] for it in items] == ["case0001_001.png", "case0003_001.png"]
    first = items[0]
    assert first["image"].shape == (1, 1, 40, 40)
    assert first["boxes"].tolist() == [EXPECTED_1]
    assert items[1]["boxes"].tolist() == [EXPECTED_2]
    # The bright patch was drawn exactly where the first gold box is: after padding + area resizing, the
    # pixels at 1.0 are exactly the box, and the padding rows are background (0).
    img = first["image"][0, 0]
    x1, y1, x2, y2 = (int(v) for v in EXPECTED_1)
    bright = img > 0.99
    assert bright[y1:y2, x1:x2].all() and bright.sum() == (y2 - y1) * (x2 - x1)
    assert (
        (img[:10] == 0).all()
        and (img[30:] == 0).all()
        and torch.allclose(img[10:30][~bright[10:30]], torch.tensor(0.3), atol=2e-3)
    )
    assert torch.equal(first["lesion"][0, 0] > 0, bright)
    assert torch.equal(first["brain"][0, 0] > 0, img > 0.05)
    assert len(read_nova(nova_dir, 40, caption_filter=None)) == 3


def test_nova_missing_folder_names_the_dataset_and_where_to_get_it(tmp_path):
    dm = NovaDataModule(data_dir=str(tmp_path / "absent"), image_size=40)
    with pytest.raises(DatasetNotFoundError) as err:
        dm.prepare_data()
    msg = str(err.value)
    assert "NOVA" in msg and "Ano-2090/Nova" in msg and "NOVA_metadata.csv" in msg and "\n" not in msg


class FlatHealthy(ReconstructionUAD):
    """A stand-in 'model' whose healthy reconstruction is the flat 0.3 head: anomalies are what differs from it."""

    def __init__(self):
        super().__init__(image_size=40, erode_size=3, median_size=3, median_dims=3, eval_seed=0)

    def reconstruct(self, x, generator):
        return torch.full_like(x, 0.3) * (x > 0.05)


def test_nova_box_scores_hand_case(nova_dir):
    # Image 1: predicted box == gold box (score 0.7). Image 3: predicted box (score 0.6) misses its gold box.
    # Ranked by score: TP then FP over 2 gold boxes -> precision 1 up to recall 0.5, then none; COCO's 101-point
    # interpolation gives AP = 51 / 101 at every IoU threshold. ACC@50: 1 of 2 images has a hit.
    dm = NovaDataModule(data_dir=str(nova_dir), image_size=40, caption_filter="T2", box_threshold=0.5, max_boxes=5)
    model = FlatHealthy()
    trainer = pl.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False)
    trainer.test(model, datamodule=dm)
    s = model.scores
    assert s["map_30"] == pytest.approx(51 / 101, abs=1e-4)
    assert s["map_50"] == pytest.approx(51 / 101, abs=1e-4)
    assert s["map"] == pytest.approx(51 / 101, abs=1e-4)
    assert s["acc_50"] == pytest.approx(0.5)
    assert "dice" not in s and set(model.examples) == {"x", "x_hat", "map", "lesion"}
    # A higher threshold than both differences (0.7, 0.6) predicts nothing: every score drops to 0.
    dm_hi = NovaDataModule(data_dir=str(nova_dir), image_size=40, box_threshold=0.75)
    trainer.test(model, datamodule=dm_hi)
    assert model.scores["map_50"] == 0.0 and model.scores["acc_50"] == 0.0


def test_nova_config_tests_an_ixi_style_checkpoint_through_the_real_cli(nova_dir):
    """The README's NOVA command: fit (here the tiny offline contract config), then `test` with a nova_* config."""
    from pathlib import Path

    from reprokit.cli import run_cli

    configs = Path(__file__).resolve().parents[1] / "configs"
    quiet = ["--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false"]
    fit = run_cli("ca_diffusion_uad", ["fit", "--config", str(configs / "cpu/contract.yaml"), "--trainer.max_steps=1"])
    ckpt = fit.trainer.checkpoint_callback.last_model_path or fit.trainer.checkpoint_callback.best_model_path
    cli = run_cli(
        "ca_diffusion_uad",
        [
            "test",
            "--config",
            str(configs / "paper/nova_contrastive_cond.yaml"),
            f"--data.init_args.data_dir={nova_dir}",
            "--data.init_args.image_size=32",  # the contract model's input size
            "--data.init_args.num_workers=0",
            "--trainer.accelerator=cpu",
            *quiet,
            "--ckpt_path",
            ckpt,
        ],
    )
    assert cli.model.hparams.image_size == 32  # the checkpoint's model, not the config's 96 px one
    assert set(cli.model.scores) == {"map_30", "map_50", "map", "acc_50"}
    assert all(0.0 <= v <= 1.0 for v in cli.model.scores.values())
