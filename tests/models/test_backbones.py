"""Backbones (models/backbones.py): the digit CNNs, torchvision / timm / EfficientNet-Lite0 by name,
their weights (offline, local files, the errors), and the options they refuse."""

import pytest
import torch

from lightning_da.models import BACKBONES, build_backbone


@pytest.mark.parametrize("name,size,channels,out", [("lenet", 28, 1, 800), ("lenet", 32, 3, 1250), ("lenet_bn", 28, 1, 768),
                                                    ("lenet_bn", 32, 1, 1200), ("dtn", 32, 3, 4096),
                                                    ("lenet_tllib", 28, 1, 500)])
def test_digit_cnns_out_features(name, size, channels, out):
    net = build_backbone(name, in_channels=channels, input_size=size)
    assert net.out_features == out
    assert net(torch.randn(2, channels, size, size)).shape == (2, out)


def test_lenet_tllib_is_lenet_plus_tllib_fc_tail():
    """TLlib's LeNet: the LeNet convolutions, then Linear(800, 500) -> ReLU -> Dropout(0.5)."""
    torch.manual_seed(0)
    plain, tllib = build_backbone("lenet"), build_backbone("lenet_tllib")
    tail = list(tllib.features)[len(plain.features):]
    assert [type(m) for m in tail] == [torch.nn.Linear, torch.nn.ReLU, torch.nn.Dropout]
    assert (tail[0].in_features, tail[0].out_features, tail[2].p) == (800, 500, 0.5)
    tllib.eval(), plain.eval()
    plain.load_state_dict({k: v for k, v in tllib.state_dict().items() if k in plain.state_dict()})
    x = torch.randn(3, 1, 28, 28)
    torch.testing.assert_close(tllib(x), torch.relu(tail[0](plain(x))))


def test_resnet_from_torchvision_without_weights():
    net = build_backbone("resnet18", pretrained=False)
    assert net.out_features == 512 and net(torch.randn(2, 3, 64, 64)).shape == (2, 512)


def test_efficientnet_lite0_imagenet_weights_load_offline():
    net = build_backbone("efficientnet_lite0", pretrained=True).eval()
    random = build_backbone("efficientnet_lite0", pretrained=False)
    assert net.out_features == 1280
    assert not torch.equal(net.net._conv_stem.weight, random.net._conv_stem.weight)
    # ImageNet BN statistics came with the weights
    assert net.net._bn0.running_var.std() > 0


def test_timm_model_by_name_and_freeze():
    net = build_backbone("timm/resnet18", pretrained=False, freeze=True)
    assert net.out_features == 512 and not any(p.requires_grad for p in net.parameters())


def test_unknown_backbone_lists_available():
    with pytest.raises(ValueError, match="available") as err:
        build_backbone("resnet7")
    assert all(name in str(err.value) for name in BACKBONES)


def test_unfetchable_weights_say_what_where_and_how(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr("torch.hub.load_state_dict_from_url", lambda *a, **k: (_ for _ in ()).throw(OSError("offline")))
    with pytest.raises(RuntimeError) as err:
        build_backbone("resnet18", pretrained=True)
    msg = str(err.value)
    assert "resnet18" in msg and "download.pytorch.org" in msg and "backbone.weights_path" in msg


def test_weights_path_loads_a_local_file(tmp_path):
    src = build_backbone("resnet18", pretrained=False)
    torch.save(src.body.state_dict(), tmp_path / "w.pth")
    net = build_backbone("resnet18", pretrained=True, weights_path=str(tmp_path / "w.pth"))
    torch.testing.assert_close(net.body.conv1.weight, src.body.conv1.weight)
    with pytest.raises(FileNotFoundError, match="not a file"):
        build_backbone("resnet18", weights_path=str(tmp_path / "missing.pth"))


def test_digit_backbones_refuse_weights_and_unknown_options():
    with pytest.raises(ValueError, match="trained from scratch"):
        build_backbone("lenet_bn", pretrained=True)
    with pytest.raises(TypeError, match=r"not \['image_size'\]"):
        build_backbone("lenet_bn", image_size=32)  # the option is input_size; a typo must not pass silently
