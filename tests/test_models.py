"""LandmarkRegressor: shapes, in-model normalisation, pretrained weights (never silently), counts."""

from __future__ import annotations

import pytest
import timm
import torch
from safetensors.torch import save_file

from kdlandmark.models import PRESETS, LandmarkRegressor, count_flops, count_macs, count_parameters

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.mark.parametrize("backbone", ["mobilenetv2_050", "resnet10t", "efficientnet_b0"])
def test_output_shape_and_range(backbone: str) -> None:
    torch.manual_seed(0)
    model = LandmarkRegressor(backbone, 29, dropout=0.5).eval()
    out = model(torch.rand(3, 3, 64, 64))
    assert out.shape == (3, 29, 2)
    assert torch.isfinite(out).all()
    # the head starts near zero: first predictions sit near the crop centre (model coordinates)
    assert out.abs().max() < 0.5


def test_normalisation_is_inside_the_model() -> None:
    torch.manual_seed(0)
    model = LandmarkRegressor("mobilenetv2_050", 68, dropout=0.0).eval()
    x = torch.rand(2, 3, 48, 48)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    manual = model.head(model.backbone((x - mean) / std)).view(2, 68, 2)
    torch.testing.assert_close(model(x), manual)
    # normalisation constants are rebuilt from the backbone, not stored with the weights
    assert "mean" not in model.state_dict() and "std" not in model.state_dict()
    arch = model.architecture()
    assert arch["backbone"] == "mobilenetv2_050" and arch["num_points"] == 68
    assert arch["normalisation"]["mean"] == pytest.approx([0.485, 0.456, 0.406])


def test_dropout_is_active_only_in_training() -> None:
    torch.manual_seed(0)
    model = LandmarkRegressor("mobilenetv2_050", 29, dropout=0.5)
    x = torch.rand(2, 3, 32, 32)
    model.eval()
    torch.testing.assert_close(model(x), model(x))
    model.train()
    for m in model.modules():  # isolate dropout: keep BatchNorm statistics fixed
        if isinstance(m, torch.nn.BatchNorm2d):
            m.eval()
    assert not torch.equal(model(x), model(x))


def test_presets_are_the_papers_networks() -> None:
    assert PRESETS == {"teacher": "efficientnet_b3", "student": "mobilenetv2_100"}


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="num_points"):
        LandmarkRegressor("mobilenetv2_050", 0)
    with pytest.raises(ValueError, match="dropout"):
        LandmarkRegressor("mobilenetv2_050", 29, dropout=1.0)
    with pytest.raises(TypeError, match="pretrained"):
        LandmarkRegressor("mobilenetv2_050", 29, pretrained=3)  # type: ignore[arg-type]


def test_pretrained_without_network_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """A failed ImageNet download must raise (saying how to pass a local file), never train from scratch."""
    import timm.models._builder as builder

    calls = []

    def no_network(*args, **kwargs):
        calls.append(args)
        raise OSError("[Errno 101] Network is unreachable")

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for name in ("load_state_dict_from_hf", "load_state_dict_from_url", "download_cached_file",
                 "load_custom_from_hf"):
        monkeypatch.setattr(builder, name, no_network)
    with pytest.raises(RuntimeError) as info:
        LandmarkRegressor("mobilenetv2_050", 29, pretrained=True)
    msg = str(info.value)
    assert "mobilenetv2_050" in msg and "network" in msg.lower()
    assert "pretrained='/path/to/" in msg  # says how to pass a local file
    assert calls, "the download path was not exercised"


def test_local_pretrained_file_loads_those_weights(tmp_path) -> None:
    torch.manual_seed(123)
    source = timm.create_model("mobilenetv2_050", pretrained=False)  # with its 1000-class classifier
    with torch.no_grad():
        for p in source.parameters():
            p.add_(0.01)  # differ from any default initialisation
    path = tmp_path / "imagenet.safetensors"
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(path))

    torch.manual_seed(0)
    model = LandmarkRegressor("mobilenetv2_050", 29, pretrained=str(path))
    sd = source.state_dict()
    for k, v in model.backbone.state_dict().items():
        assert torch.equal(v, sd[k]), k
    random_model = LandmarkRegressor("mobilenetv2_050", 29)
    assert not torch.equal(random_model.backbone.conv_stem.weight, sd["conv_stem.weight"])


def test_local_pretrained_file_of_wrong_architecture_fails(tmp_path) -> None:
    other = timm.create_model("resnet10t", pretrained=False)
    path = tmp_path / "resnet.safetensors"
    save_file({k: v.contiguous() for k, v in other.state_dict().items()}, str(path))
    with pytest.raises(ValueError, match="resnet.safetensors"):
        LandmarkRegressor("mobilenetv2_050", 29, pretrained=str(path))
    with pytest.raises(FileNotFoundError):
        LandmarkRegressor("mobilenetv2_050", 29, pretrained=str(tmp_path / "missing.safetensors"))
    pth = tmp_path / "w.pth"
    pth.write_bytes(b"not used")
    with pytest.raises(ValueError, match="safetensors"):
        LandmarkRegressor("mobilenetv2_050", 29, pretrained=str(pth))


def test_parameter_count() -> None:
    model = LandmarkRegressor("mobilenetv2_050", 29)
    n = count_parameters(model)
    assert n == sum(p.numel() for p in model.parameters()) > 0
    head = model.head.weight.numel() + model.head.bias.numel()
    assert head == (model.backbone.num_features + 1) * 58
    for p in model.backbone.parameters():
        p.requires_grad_(False)
    assert count_parameters(model, trainable_only=True) == head
    assert count_parameters(model) == n


def test_flops_positive_and_quadratic_in_side() -> None:
    model = LandmarkRegressor("mobilenetv2_050", 29).train()
    f64, f128 = count_flops(model, 64), count_flops(model, (128, 128))
    assert f64 > 0
    # convolutions scale with the pixel count; the head does not -> a bit under 4x
    assert 3.5 < f128 / f64 <= 4.0
    assert count_macs(model, 64) == f64 // 2
    assert count_flops(model, (2, 3, 64, 64)) == 2 * f64
    assert model.training  # counting does not leave the model in eval mode
