import csv

import numpy as np
import pytest
import torch
from medsae.data import CHEXPERT_LABELS, EmbeddingDataModule, read_chexpert_csv
from reprokit.data import DatasetNotFoundError


def _fake_chexpert(root, n=6):
    """A CheXpert-v1.0-small-shaped folder: train.csv with blank/-1/0/1 labels, small grey PNGs, one lateral view."""
    from PIL import Image

    root.mkdir(parents=True)
    rows = []
    for i in range(n):
        rel = f"train/patient{i:05d}/study1/view1_{'lateral' if i == n - 1 else 'frontal'}.jpg"
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray((np.random.default_rng(i).random((40, 40)) * 255).astype(np.uint8)).save(root / rel, "PNG")
        labels = {name: "" for name in CHEXPERT_LABELS}
        labels["Cardiomegaly"] = ["1.0", "-1.0", "0.0", "", "1.0", "1.0"][i]
        labels["Edema"] = "-1.0" if i == 0 else "1.0"
        frontal = "Lateral" if i == n - 1 else "Frontal"
        rows.append({"Path": f"{root.name}/{rel}", "Sex": "F", "Age": "50", "Frontal/Lateral": frontal, **labels})
    with open(root / "train.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return root


def test_read_chexpert_csv_label_policies(tmp_path):
    root = _fake_chexpert(tmp_path / "CheXpert-v1.0-small")
    paths, zeros = read_chexpert_csv(root, uncertain="zeros")
    _, ones = read_chexpert_csv(root, uncertain="ones")
    assert len(paths) == 5 and all(p.is_file() for p in paths)  # the lateral view is dropped
    cardio = CHEXPERT_LABELS.index("Cardiomegaly")
    edema = CHEXPERT_LABELS.index("Edema")
    assert zeros[:, cardio].tolist() == [1, 0, 0, 0, 1]
    assert ones[:, cardio].tolist() == [1, 1, 0, 0, 1]
    assert zeros[:, edema].tolist() == [0, 1, 1, 1, 1] and ones[:, edema].tolist() == [1, 1, 1, 1, 1]


def test_embedding_datamodule_real_path_builds_a_store(tmp_path):
    root = _fake_chexpert(tmp_path / "CheXpert-v1.0-small")
    dm = EmbeddingDataModule(
        source="chexpert",
        data_dir=str(root),
        encoder="small",
        embed_dim=8,
        image_size=32,
        store_dir=str(tmp_path / "store"),
        batch_size=2,
    )
    dm.prepare_data()
    dm.setup("fit")
    assert dm.store.meta()["n"] == 5 and dm.label_names == CHEXPERT_LABELS
    every = dm.split_tensors("train")
    assert every["x"].shape[1] == 8 and torch.allclose(every["e"].norm(dim=1), torch.ones(len(every["e"])), atol=1e-5)
    batch = next(iter(dm.train_dataloader()))
    assert batch["x"].shape == (2, 8) and batch["y"].shape == (2, 14)


def test_missing_chexpert_is_reported_in_prepare_data_not_init(tmp_path):
    dm = EmbeddingDataModule(source="chexpert", data_dir=str(tmp_path / "nope"))
    with pytest.raises(DatasetNotFoundError, match="CheXpert not found"):
        dm.prepare_data()
    with pytest.raises(DatasetNotFoundError, match="stanfordmlgroup"):
        dm.setup("fit")


def test_paper_reproduce_without_data_fails_in_one_line(tmp_path, capsys):
    from medsae.cli import main

    data, out = tmp_path / "data", tmp_path / "out"
    args = ["reproduce", "--scale", "paper", "--data_dir", str(data), "--out", str(out)]
    for round_, needles in enumerate(
        (("CheXpert not found", "stanfordmlgroup", "train.csv"), ("MedCLIP-RN50 weights not found", "medclip"))
    ):
        if round_ == 1:  # the data is there now, the weights are not
            _fake_chexpert(data / "CheXpert-v1.0-small")
        with pytest.raises(SystemExit) as exc:
            main(args)
        assert exc.value.code == 2
        captured = capsys.readouterr()
        assert captured.err.startswith("medsae: error:") and captured.err.count("\n") == 1, captured.err
        assert all(n in captured.err for n in needles), captured.err
        assert not out.exists() and not (tmp_path / "runs").exists()


def test_missing_medclip_weights_stop_prepare_data_clearly(tmp_path):
    root = _fake_chexpert(tmp_path / "CheXpert-v1.0-small")
    dm = EmbeddingDataModule(
        source="chexpert", data_dir=str(root), encoder="medclip", encoder_ckpt=str(tmp_path / "nope.bin")
    )
    with pytest.raises(DatasetNotFoundError, match=r"MedCLIP-RN50 weights not found at .*nope\.bin"):
        dm.prepare_data()
