"""The cifar10 recipe's pieces: the whitening first layer, shift-only batch norm,
``alexnet_fast`` itself, and what the trainer does for them (fit the first layer to the data
before the first step, a larger learning rate for biases and batch-norm shifts)."""

from __future__ import annotations

import pytest
import torch
from test_training import Blobs, tiny_config, weights

from alexnet.errors import ConfigError
from alexnet.layers import PatchWhitening, shift_only_bn
from alexnet.models import AlexNetFast, create_model, model_info
from alexnet.training import train
from alexnet.training.config import from_dict, preset
from alexnet.training.trainer import Trainer, parameter_groups


def correlated_images(n: int = 64, size: int = 12) -> torch.Tensor:
    """Images whose channels and neighbouring pixels are strongly correlated (as photos are)."""
    g = torch.Generator().manual_seed(0)
    base = torch.randn(n, 1, size, size, generator=g).repeat(1, 3, 1, 1)
    base = base + 0.3 * torch.randn(n, 3, size, size, generator=g)
    return torch.nn.functional.avg_pool2d(base, 3, stride=1, padding=1) * torch.tensor([1.0, 2.0, 0.5]).view(1, 3, 1, 1)


def test_patch_whitening_decorrelates_the_patches_it_was_fitted_to():
    x = correlated_images()
    layer = PatchWhitening(3, kernel_size=2, eps=1e-8).fit_(x)
    assert layer.out_channels == 24 and not layer.weight.requires_grad and layer.bias.requires_grad
    out = torch.nn.functional.conv2d(x.double(), layer.weight.double())  # without the bias
    half = out[:, :12].permute(0, 2, 3, 1).reshape(-1, 12)
    cov = half.T @ half / len(half)
    torch.testing.assert_close(cov, torch.eye(12, dtype=torch.float64), atol=1e-3, rtol=0)
    torch.testing.assert_close(layer.weight[12:], -layer.weight[:12])  # each filter and its negative
    # the raw patches were far from white: the test would pass on an identity layer otherwise
    raw = x.double().unfold(2, 2, 1).unfold(3, 2, 1).permute(0, 2, 3, 1, 4, 5).reshape(-1, 12)
    assert (raw.T @ raw / len(raw) - torch.eye(12, dtype=torch.float64)).abs().max() > 0.5


def test_patch_whitening_refuses_the_wrong_shape():
    with pytest.raises(ValueError, match=r"\[N, 3, H, W\]"):
        PatchWhitening(3).fit_(torch.zeros(4, 1, 8, 8))


def test_shift_only_batch_norm_learns_only_its_shift():
    bn = shift_only_bn(8)
    assert not bn.weight.requires_grad and bn.bias.requires_grad and bn.momentum == 0.4
    assert torch.equal(bn.weight.detach(), torch.ones(8))


def test_alexnet_fast_shape_layers_and_initialisation():
    model = create_model("alexnet_fast")
    assert model_info("alexnet_fast").num_params() == 1_972_792
    acts = model.forward_layers(torch.randn(2, 3, 32, 32))
    assert list(acts) == [f"conv{i}" for i in range(1, 8)] + ["fc8"]
    assert [tuple(a.shape[1:]) for a in acts.values()] == [
        (24, 31, 31), (64, 15, 15), (64, 15, 15), (256, 7, 7), (256, 7, 7), (256, 3, 3), (256, 3, 3), (10,)]
    # every 3x3 convolution starts as a partial identity: its first in_channels filters are Dirac deltas
    for name in ("conv2", "conv3", "conv4", "conv5", "conv6", "conv7"):
        w = getattr(model, name).weight.detach()
        dirac = torch.zeros(w.shape[1], w.shape[1], 3, 3)
        dirac[range(w.shape[1]), range(w.shape[1]), 1, 1] = 1
        assert torch.equal(w[: w.shape[1]], dirac), name
        assert w[w.shape[1] :].abs().sum() > 0 or w.shape[0] == w.shape[1]
    # logits are the linear layer's divided by the temperature
    pooled = torch.randn(2, 256)
    assert torch.allclose(model.fc8(pooled) / 9, model.fc8(pooled) / model.temperature)
    small = create_model("alexnet_fast", num_classes=3, width=0.25)
    assert small(torch.randn(1, 3, 32, 32)).shape == (1, 3) and small.conv4.out_channels == 64


def test_alexnet_fast_logits_are_divided_by_the_temperature():
    torch.manual_seed(0)
    model = create_model("alexnet_fast", width=0.125).eval()
    x = torch.randn(2, 3, 32, 32)
    hot = model(x)
    model.temperature = 1.0
    torch.testing.assert_close(model(x), hot * 9)


def test_bias_lr_scale_multiplies_the_rate_of_biases_and_norm_shifts(tmp_path):
    cfg = tiny_config(tmp_path / "run", model="alexnet_fast", model_options={"width": 0.125}, crop=16,
                      bias_lr_scale=64.0, lr=0.01, schedule="constant")
    trainer = Trainer(cfg, train_set=Blobs(size=16), val_set=Blobs(n=16, size=16, seed=1))
    trainer._set_lr()
    weights_group, bias_group = trainer.optimizer.param_groups
    assert weights_group["lr"] == pytest.approx(0.01) and bias_group["lr"] == pytest.approx(0.64)
    assert bias_group["weight_decay"] == 0.0 and weights_group["weight_decay"] == cfg.weight_decay
    biases = {id(p) for p in bias_group["params"]}
    assert id(trainer.model.norm2.bias) in biases and id(trainer.model.conv1.bias) in biases
    frozen = [trainer.model.norm2.weight, trainer.model.conv1.weight]  # fixed: in no group
    grouped = {id(p) for g in trainer.optimizer.param_groups for p in g["params"]}
    assert not any(id(p) in grouped for p in frozen)


def test_parameter_groups_keep_one_group_for_the_literal_paper_reading():
    model = create_model("alexnet_small", width=0.125)
    assert len(parameter_groups(model, 5e-4, decay_bias=True)) == 1
    groups = parameter_groups(model, 5e-4, decay_bias=True, bias_lr_scale=2.0)
    assert [g["weight_decay"] for g in groups] == [5e-4, 5e-4] and groups[1]["lr_scale"] == 2.0
    with pytest.raises(ConfigError, match="bias_lr_scale"):
        from_dict({"bias_lr_scale": 0})


def test_the_trainer_fits_the_first_layer_to_the_training_images_once(tmp_path, monkeypatch):
    data, val = Blobs(n=64, size=16), Blobs(n=16, size=16, seed=1)
    options = {"model": "alexnet_fast", "model_options": {"width": 0.125}, "crop": 16, "epochs": 2}
    trainer = Trainer(tiny_config(tmp_path / "run", max_steps=3, **options), train_set=data, val_set=val)
    fitted = trainer.model.conv1.weight.detach().clone()
    expected = PatchWhitening(3, 2).fit_(trainer._sample_inputs(64).cpu()).weight
    torch.testing.assert_close(fitted, expected)
    assert trainer.fit().status == "max_steps"
    torch.testing.assert_close(weights(tmp_path / "run")["conv1.weight"], fitted)  # frozen: it stays
    # resumed, the layer comes from the checkpoint: it is not fitted again
    calls = []
    monkeypatch.setattr(AlexNetFast, "init_from_data", lambda self, x: calls.append(len(x)))
    result = train(tiny_config(tmp_path / "run", **options), train_set=data, val_set=val, resume=True)
    assert result.status == "completed" and calls == []
    torch.testing.assert_close(weights(tmp_path / "run")["conv1.weight"], fitted)


def test_the_cifar10_preset_is_the_fast_recipe_and_the_old_one_is_kept():
    cfg = preset("cifar10")
    assert cfg.model == "alexnet_fast" and cfg.batch_size == 1024 and cfg.bias_lr_scale == 64.0
    assert cfg.model_options == {"width": 1.0}  # with Muon, width 1.25 only ties in 15 minutes (91.1%)
    assert cfg.optimizer == "muon" and cfg.muon_normalize and (cfg.muon_lr, cfg.muon_momentum) == (0.24, 0.6)
    assert cfg.label_smoothing == 0.2 and cfg.nesterov and cfg.schedule == "linear" and cfg.min_lr == 0.0
    assert preset("cifar10-small").model == "alexnet_small"
