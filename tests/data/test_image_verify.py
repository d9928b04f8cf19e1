"""Unreadable images (lightning_da.data.images): ``data.verify_images=true`` opens every image when the
domains are built and lists all bad files in one error; without it, the error at first read says
that the check exists."""

import os
import shutil

import pytest

from conftest import QUICK, make_cfg
from lightning_da.data.domain import DataError
from lightning_da.data.examples import write_examples
from lightning_da.data.images import ImageSamples
from lightning_da.train import build

FAST = [*QUICK, "data.num_workers=0", "data.batch_size=8", "logger=none"]


@pytest.fixture(scope="module")
def broken(tmp_path_factory):
    """The own-data example (MNIST folder, USPS train/test) with one file of garbage bytes in the
    source and one truncated PNG in the target's test split."""
    root = write_examples(tmp_path_factory.mktemp("broken"))
    (root / "mnist" / "3" / "garbage.png").write_bytes(b"this is not an image")
    test3 = root / "usps" / "test" / "3"
    good = test3 / sorted(os.listdir(test3))[0]
    data = good.read_bytes()
    (test3 / "truncated.png").write_bytes(data[: len(data) // 2])
    return root


def cfg_for(root, tmp_path, *extra):
    return make_cfg(tmp_path, ["data=image_folder", f"data.source={root / 'mnist'}", f"data.target={root / 'usps'}",
                               *FAST, *extra])


def test_verify_images_lists_every_unreadable_file_before_training(broken, tmp_path):
    with pytest.raises(DataError) as err:
        build(cfg_for(broken, tmp_path, "data.verify_images=true"))[0].num_classes
    msg = str(err.value)
    assert "1 of 41 image(s) cannot be read" in msg and str(broken / "mnist" / "3" / "garbage.png") in msg
    assert "remove or replace them" in msg


def test_verify_images_reports_the_target_test_split_too(broken, tmp_path):
    clean = tmp_path / "clean_mnist"
    shutil.copytree(broken / "mnist", clean)
    (clean / "3" / "garbage.png").unlink()
    cfg = make_cfg(tmp_path, ["data=image_folder", f"data.source={clean}", f"data.target={broken / 'usps'}", *FAST,
                              "data.verify_images=true"])
    with pytest.raises(DataError, match=r"1 of 61 image\(s\) cannot be read:\n  .*truncated\.png"):
        build(cfg)[0].num_classes


def test_without_the_check_a_bad_image_names_the_flag_when_read(broken):
    with pytest.raises(DataError, match=r"cannot read image .*garbage\.png: .*data\.verify_images=true opens every image"):
        ImageSamples([(str(broken / "mnist" / "3" / "garbage.png"), 3)])[0]


def test_clean_folders_pass_the_check(tmp_path):
    root = write_examples(tmp_path / "clean")
    dm = build(cfg_for(root, tmp_path, "data.verify_images=true"))[0]
    assert dm.num_classes == 10
