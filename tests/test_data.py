"""Dataset loaders on generated miniature trees: layouts, id maps, protocols, transforms and errors."""
from __future__ import annotations

import importlib.util
import sys

import numpy as np
import pytest
import torch

from data_trees import cityscapes_tree, crosscity_tree, gta5_tree, synthia_tree, write_png16
from ssfdan_ext.data import (GTA5, Cityscapes, CrossCity, Synthia, augment, build_dataset, class_names, classes,
                             denormalize, normalize, read_png)

# Synthia's 16-bit labels are read with OpenCV (the 'synthia' extra, part of the 'test' extra).
needs_cv2 = pytest.mark.skipif(importlib.util.find_spec("cv2") is None,
                               reason="opencv-python-headless is not installed")

# cityscapesScripts labels.py: (name, id, trainId); trainId 255 / -1 are not evaluated.
OFFICIAL = [
    ("unlabeled", 0, 255), ("ego vehicle", 1, 255), ("rectification border", 2, 255), ("out of roi", 3, 255),
    ("static", 4, 255), ("dynamic", 5, 255), ("ground", 6, 255), ("road", 7, 0), ("sidewalk", 8, 1),
    ("parking", 9, 255), ("rail track", 10, 255), ("building", 11, 2), ("wall", 12, 3), ("fence", 13, 4),
    ("guard rail", 14, 255), ("bridge", 15, 255), ("tunnel", 16, 255), ("pole", 17, 5), ("polegroup", 18, 255),
    ("traffic light", 19, 6), ("traffic sign", 20, 7), ("vegetation", 21, 8), ("terrain", 22, 9), ("sky", 23, 10),
    ("person", 24, 11), ("rider", 25, 12), ("car", 26, 13), ("truck", 27, 14), ("bus", 28, 15),
    ("caravan", 29, 255), ("trailer", 30, 255), ("train", 31, 16), ("motorcycle", 32, 17), ("bicycle", 33, 18),
    ("license plate", -1, -1),
]
OFFICIAL_TRAINID = {i: t for _, i, t in OFFICIAL if i >= 0 and t not in (255, -1)}
SYNTHIA_NAMES = {3: "road", 4: "sidewalk", 2: "building", 21: "wall", 5: "fence", 7: "pole", 15: "traffic light",
                 9: "traffic sign", 6: "vegetation", 1: "sky", 10: "person", 17: "rider", 8: "car", 19: "bus",
                 12: "motorcycle", 11: "bicycle", 16: "terrain", 18: "truck", 20: "train"}
CROSSCITY = ("road", "sidewalk", "building", "traffic light", "traffic sign", "vegetation", "sky", "person",
             "rider", "car", "bus", "motorcycle", "bicycle")


def _expected(ids: np.ndarray, table: dict[int, int], num_classes: int) -> np.ndarray:
    """Map label ids to protocol indices independently of the library: by class names."""
    names = class_names(num_classes)
    lookup = {i: names.index(classes.CITYSCAPES_CLASSES[t]) for i, t in table.items()
              if classes.CITYSCAPES_CLASSES[t] in names}
    return np.vectorize(lambda v: lookup.get(int(v), 255))(ids)


def test_every_cityscapes_id_maps_as_the_official_table():
    lut = classes.cityscapes_id_lut(19)
    for label_id in range(256):
        assert lut[label_id] == OFFICIAL_TRAINID.get(label_id, 255), label_id
    for name, label_id, train_id in OFFICIAL:
        if train_id not in (255, -1):
            assert classes.CITYSCAPES_CLASSES[train_id] == name


def test_protocol_class_sets():
    all19 = set(classes.CITYSCAPES_CLASSES)
    assert set(class_names(16)) == all19 - {"terrain", "truck", "train"}
    assert set(class_names(13)) == set(class_names(16)) - {"wall", "fence", "pole"}
    assert class_names(13) == CROSSCITY
    with pytest.raises(ValueError, match="num_classes"):
        class_names(7)


def test_synthia_ids_map_to_the_named_classes():
    lut = classes.synthia_id_lut(19)
    for synthia_id in range(256):
        name = SYNTHIA_NAMES.get(synthia_id)
        assert lut[synthia_id] == (255 if name is None else classes.CITYSCAPES_CLASSES.index(name))


@pytest.mark.parametrize("num_classes", [19, 16, 13])
def test_gta5_labels_follow_the_official_table(tmp_path, num_classes):
    labels = gta5_tree(tmp_path)
    ds = GTA5(tmp_path, split="train", num_classes=num_classes, size=None)
    assert len(ds) == 2
    for image, label, name in ds:
        assert image.shape == (3, 12, 20) and image.dtype == torch.float32
        assert label.dtype == torch.int64
        np.testing.assert_array_equal(label.numpy(), _expected(labels[name], OFFICIAL_TRAINID, num_classes))
    assert len(GTA5(tmp_path, split="all", size=None)) == 2  # every image when no list is wanted


def test_gta5_resize_and_missing_files(tmp_path):
    gta5_tree(tmp_path)
    image, label, _ = GTA5(tmp_path, split="train", size=(6, 10))[0]
    assert image.shape == (3, 6, 10) and label.shape == (6, 10)
    (tmp_path / "labels" / "00002.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"00002\.png(.|\n)*labels/<name>\.png"):
        GTA5(tmp_path, split="train")
    with pytest.raises(FileNotFoundError, match=r"val\.txt(.|\n)*images/<name>\.png"):
        GTA5(tmp_path, split="val")
    with pytest.raises(FileNotFoundError, match="dataset root"):
        GTA5(tmp_path / "nowhere")


def test_label_of_another_size(tmp_path):
    labels = gta5_tree(tmp_path)
    from data_trees import write_ids

    write_ids(tmp_path / "labels" / "00001.png", labels["00001.png"][:10])  # 20x10 label, 20x12 image
    image, label, _ = GTA5(tmp_path, split="train", size=(6, 10))[0]  # both resized, like the usual loaders
    assert image.shape == (3, 6, 10) and label.shape == (6, 10)
    assert GTA5(tmp_path, split="train", size=(6, 10), resize_label=False)[0][1].shape == (10, 20)
    with pytest.raises(ValueError, match=r"00001\.png is 20x10 \(WxH\) but image .*20x12"):
        GTA5(tmp_path, split="train", size=None)[0]
    with pytest.raises(ValueError, match="resize_label=False"):
        GTA5(tmp_path, split="train", resize_label=False, crop=(4, 4))


@needs_cv2
def test_png16_reader_undoes_every_filter(tmp_path):
    arr = np.random.default_rng(0).integers(0, 65536, (11, 7, 3))
    write_png16(tmp_path / "x.png", arr)  # rows cycle through all five PNG filter types
    np.testing.assert_array_equal(read_png(tmp_path / "x.png"), arr)
    with pytest.raises(FileNotFoundError, match="y.png"):
        read_png(tmp_path / "y.png")
    (tmp_path / "z.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match="z.png"):
        read_png(tmp_path / "z.png")


def test_png16_reader_names_the_missing_package(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "cv2", None)  # as if OpenCV were not installed
    with pytest.raises(ImportError, match="opencv-python-headless"):
        read_png(tmp_path / "x.png")


@needs_cv2
@pytest.mark.parametrize("num_classes", [16, 13, 19])
def test_synthia_labels(tmp_path, num_classes):
    labels = synthia_tree(tmp_path)
    ds = Synthia(tmp_path, num_classes=num_classes, size=None)
    assert ds.class_names == class_names(num_classes)
    synthia_trainid = {i: classes.CITYSCAPES_CLASSES.index(n) for i, n in SYNTHIA_NAMES.items()}
    for _, label, name in ds:
        np.testing.assert_array_equal(label.numpy(), _expected(labels[name], synthia_trainid, num_classes))
    with pytest.raises(FileNotFoundError, match="GT/LABELS"):
        (tmp_path / "GT" / "LABELS" / "0000001.png").unlink()
        Synthia(tmp_path)


@pytest.mark.parametrize("num_classes", [19, 16, 13])
def test_cityscapes_labels_and_full_resolution(tmp_path, num_classes):
    labels = cityscapes_tree(tmp_path, "val")
    ds = Cityscapes(tmp_path, split="val", num_classes=num_classes, size=(8, 16), resize_label=False)
    assert len(ds) == 4
    for image, label, name in ds:
        assert image.shape == (3, 8, 16) and label.shape == (16, 32)  # labels stay at full resolution
        np.testing.assert_array_equal(label.numpy(), _expected(labels[name], OFFICIAL_TRAINID, num_classes))
    with pytest.raises(FileNotFoundError, match="leftImg8bit/<split>"):
        Cityscapes(tmp_path, split="train")
    with pytest.raises(ValueError, match="split"):
        Cityscapes(tmp_path, split="test")


def test_cityscapes_list_file(tmp_path):
    cityscapes_tree(tmp_path, "train", cities=("ulm",))
    listing = tmp_path / "list.txt"
    listing.write_text("ulm/ulm_000000_000001_leftImg8bit.png\n")
    ds = Cityscapes(tmp_path, split="train", list_path=listing, size=None)
    assert [name for _, _, name in ds] == ["ulm_000000_000001_leftImg8bit.png"]


def test_crosscity_train_is_unlabelled_and_test_is_labelled(tmp_path):
    labels = crosscity_tree(tmp_path, "Tokyo")
    train = CrossCity(tmp_path, city="Tokyo", split="train", size=None)
    assert len(train) == 3 and train.num_classes == 13
    assert all(bool((label == 255).all()) for _, label, _ in train)
    assert sorted(name for _, _, name in train) == ["train_000.png", "train_001.jpg", "train_002.jpg"]
    test = CrossCity(tmp_path, city="Tokyo", split="test", size=None)
    for _, label, name in test:
        np.testing.assert_array_equal(label.numpy(), _expected(labels[name], OFFICIAL_TRAINID, 13))
    with pytest.raises(FileNotFoundError, match="Tokyo/Labels/Test/pano_00001_eval.png(.|\n)*<City>/Labels"):
        (tmp_path / "Tokyo" / "Labels" / "Test" / "pano_00001_eval.png").unlink()
        CrossCity(tmp_path, city="Tokyo", split="test")
    with pytest.raises(FileNotFoundError, match="Rio/Images/Train"):
        CrossCity(tmp_path, city="Rio")
    with pytest.raises(ValueError, match="city"):
        CrossCity(tmp_path, city="Paris")


def test_crosscity_label_encodings(tmp_path):
    crosscity_tree(tmp_path, "Rio")
    ids = np.array([[7, 8, 11, 12], [19, 20, 21, 22], [23, 24, 25, 26], [28, 32, 33, 0]])
    from data_trees import write_ids

    write_ids(tmp_path / "Rio" / "Labels" / "Test" / "pano_00000_eval.png", np.pad(ids, ((0, 12), (0, 28))))
    (tmp_path / "Rio" / "Images" / "Test" / "pano_00001.png").unlink()
    from data_trees import write_rgb

    write_rgb(tmp_path / "Rio" / "Images" / "Test" / "pano_00000.png", 16, 32, 0)
    label = CrossCity(tmp_path, city="Rio", split="test", size=None)[0][1]
    np.testing.assert_array_equal(label[:4, :4].numpy(),
                                  [[0, 1, 2, 255], [3, 4, 5, 255], [6, 7, 8, 9], [10, 11, 12, 255]])
    # Files already holding 13-class indices or Cityscapes train ids.
    write_ids(tmp_path / "Rio" / "Labels" / "Test" / "pano_00000_eval.png", np.full((16, 32), 12))
    assert set(CrossCity(tmp_path, "Rio", "test", size=None, label_encoding="index13")[0][1].unique().tolist()) \
        == {12}
    assert set(CrossCity(tmp_path, "Rio", "test", size=None, label_encoding="trainid")[0][1].unique().tolist()) \
        == {8}  # train id 12 is rider, index 8 of the 13 classes
    with pytest.raises(ValueError, match="label_encoding"):
        CrossCity(tmp_path, "Rio", "test", label_encoding="rgb")


def test_build_dataset_and_normalisation(tmp_path):
    cityscapes_tree(tmp_path, "train")
    ds = build_dataset("cityscapes", tmp_path, "train", size=None, normalization="caffe")
    image = ds[0][0]
    from PIL import Image

    raw = np.asarray(Image.open(ds.items[0][0]).convert("RGB"), dtype=np.float32)
    np.testing.assert_allclose(denormalize(image, "caffe").permute(1, 2, 0).numpy(), raw, atol=1e-3)
    np.testing.assert_allclose(image[0].numpy(), raw[..., 2] - 104.00698793, atol=1e-3)  # BGR minus mean
    rgb = torch.rand(3, 4, 4) * 255
    torch.testing.assert_close(denormalize(normalize(rgb)), rgb, rtol=1e-5, atol=1e-3)
    with pytest.raises(ValueError, match="name"):
        build_dataset("kitti", tmp_path)
    with pytest.raises(ValueError, match="normalization"):
        build_dataset("cityscapes", tmp_path, "train", normalization="bgr")


def test_augment_crop_scale_flip():
    image = torch.arange(2 * 3 * 4 * 6, dtype=torch.float32).reshape(2 * 3, 4, 6)[:3]
    label = torch.arange(24).reshape(4, 6)
    torch.manual_seed(0)
    x, y = augment(image, label, crop=(8, 5))  # larger than the picture: padded with 0 / IGNORE
    assert x.shape == (3, 8, 5) and y.shape == (8, 5)
    assert bool((y[4:] == 255).all())
    torch.manual_seed(1)
    x1, y1 = augment(image, label, crop=(3, 3), scale=(0.5, 2.0), flip=True)
    torch.manual_seed(1)
    x2, y2 = augment(image, label, crop=(3, 3), scale=(0.5, 2.0), flip=True)
    assert torch.equal(x1, x2) and torch.equal(y1, y2) and y1.shape == (3, 3)
    assert set(y1.unique().tolist()) <= set(range(24)) | {255}  # nearest-neighbour labels stay class ids
    flips = {bool(torch.equal(augment(image, label, flip=True)[1], label.flip(-1))) for _ in range(20)}
    assert flips == {True, False}
