"""The digit domains (data/digits.py) from the torchvision roots and MNIST-M's original layout."""

from conftest import SHARED_DATA, needs_shared
from lightning_da.data.digits import mnist, mnist_m, usps


@needs_shared(SHARED_DATA / "MNIST")
def test_full_digits_from_torchvision_roots():
    m, u = mnist(str(SHARED_DATA)), usps(str(SHARED_DATA), image_size=28)
    assert (len(m.train), len(m.test), len(u.train), len(u.test)) == (60000, 10000, 7291, 2007)
    assert u.train[0][0].shape == (1, 28, 28)


@needs_shared(SHARED_DATA / "mnist_m")
def test_mnist_m_original_layout_is_transductive():
    d = mnist_m(str(SHARED_DATA), image_size=32, channels=3)
    assert len(d.train) == 9001 and d.test is None and d.train[0][0].shape == (3, 32, 32)
