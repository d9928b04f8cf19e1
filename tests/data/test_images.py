"""The image domains (data/images.py): an image folder without images, a corrupt image, the image-list
layout."""

import pytest

from lightning_da.data import DataError
from lightning_da.data.images import image_domain


def test_image_folder_without_images_and_corrupt_image(tmp_path):
    (tmp_path / "dom" / "cat").mkdir(parents=True)
    with pytest.raises(DataError, match="no images"):
        image_domain("dom", str(tmp_path), path="dom")
    (tmp_path / "dom" / "cat" / "broken.jpg").write_bytes(b"not a jpeg")
    d = image_domain("dom", str(tmp_path), path="dom", transform={"resize": 32, "crop": 28})
    with pytest.raises(DataError, match="broken.jpg"):
        d.train[0]


def test_image_list_layout(tmp_path):
    from PIL import Image

    (tmp_path / "imgs").mkdir()
    for i in range(4):
        Image.new("RGB", (20, 20), (i * 60, 0, 0)).save(tmp_path / "imgs" / f"{i}.png")
    (tmp_path / "list.txt").write_text("".join(f"imgs/{i}.png {i % 2}\n" for i in range(4)))
    d = image_domain("p", str(tmp_path), list_file="list.txt", classes=["x", "y"], transform={"resize": 32, "crop": 28})
    assert d.classes == ["x", "y"] and len(d.train) == 4
    x, y = d.train_eval[3]
    assert x.shape == (3, 28, 28) and y == 1
    (tmp_path / "bad.txt").write_text("imgs/0.png\n")
    with pytest.raises(DataError, match="expected 'path label'"):
        image_domain("p", str(tmp_path), list_file="bad.txt")
