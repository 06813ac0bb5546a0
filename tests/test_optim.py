"""The paper's update rule (optim.PaperSGD) against a hand-written loop, across an lr drop;
PyTorch's SGD differs exactly there; the config key; exact resume with it. Muon: the
orthogonalised step on the filters, torch's step on the rest, exact resume."""

from __future__ import annotations

import copy

import pytest
import torch
from test_training import Blobs, tiny_config, weights

from alexnet.errors import ConfigError, TrainingError
from alexnet.training import from_dict, preset, train
from alexnet.training.optim import (
    PaperSGD,
    build_optimizer,
    convert_state,
    load_state,
    orthogonalize,
    state_kind,
)
from alexnet.training.trainer import Trainer, parameter_groups

M, WD = 0.9, 5e-4
# 6 steps at 0.01, then the paper's divide-by-10, 6 more steps
LRS = [0.01] * 6 + [0.001] * 6


def _problem(seed: int = 0) -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(5, 4), torch.nn.Tanh(), torch.nn.Linear(4, 3))
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g))
    return model, torch.randn(8, 5, generator=g, dtype=torch.float64), torch.randint(0, 3, (8,), generator=g)


def _loss(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.cross_entropy(model(x), y)


def _hand_written(model: torch.nn.Module, x, y, lrs, decay_bias: bool) -> list[dict[str, torch.Tensor]]:
    """The paper's two lines, per parameter, with no optimiser class at all."""
    params = dict(model.named_parameters())
    v = {k: torch.zeros_like(p) for k, p in params.items()}
    history = []
    for lr in lrs:
        model.zero_grad()
        _loss(model, x, y).backward()
        with torch.no_grad():
            for k, w in params.items():
                wd = WD if (w.ndim > 1 or decay_bias) else 0.0
                v[k] = M * v[k] - wd * lr * w - lr * w.grad
                w += v[k]
        history.append({k: p.detach().clone() for k, p in params.items()})
    return history


def _with(opt_kind: str, model: torch.nn.Module, x, y, lrs, decay_bias: bool) -> list[dict[str, torch.Tensor]]:
    opt = build_optimizer(opt_kind, parameter_groups(model, WD, decay_bias), lr=lrs[0], momentum=M)
    history = []
    for lr in lrs:
        for group in opt.param_groups:  # as the trainer's _set_lr does before each step
            group["lr"] = lr
        opt.zero_grad()
        _loss(model, x, y).backward()
        opt.step()
        history.append({k: p.detach().clone() for k, p in model.named_parameters()})
    return history


def _max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    return max(float((a[k] - b[k]).abs().max()) for k in a)


@pytest.mark.parametrize("decay_bias", [False, True])
def test_paper_sgd_is_the_papers_rule_across_an_lr_drop(decay_bias):
    model, x, y = _problem()
    model = model.double()
    ref = _hand_written(copy.deepcopy(model), x, y, LRS, decay_bias)
    got = _with("paper", copy.deepcopy(model), x, y, LRS, decay_bias)
    for step, (a, b) in enumerate(zip(ref, got, strict=True)):
        assert _max_diff(a, b) < 1e-13, f"step {step + 1}"


def test_torch_sgd_agrees_at_constant_lr_and_differs_after_the_drop():
    """The test above has teeth: PyTorch's rule is the same while lr is constant (v = -lr b)
    and departs right after the divide-by-10, when it rescales the accumulated velocity."""
    model, x, y = _problem()
    model = model.double()
    ref = _hand_written(copy.deepcopy(model), x, y, LRS, False)
    torch_sgd = _with("torch", copy.deepcopy(model), x, y, LRS, False)
    assert all(_max_diff(ref[i], torch_sgd[i]) < 1e-12 for i in range(6))  # before the drop
    # first step after the drop: torch moves by a tenth of the old velocity, the paper by 0.9 of it
    assert _max_diff(ref[6], torch_sgd[6]) > 1e-4
    assert _max_diff(ref[-1], torch_sgd[-1]) > 1e-4


def test_velocity_after_a_drop_decays_geometrically():
    """A zero gradient after the drop isolates the velocity: the paper keeps 0.9^k of it."""
    w = torch.nn.Parameter(torch.zeros(1, dtype=torch.float64))
    opt = PaperSGD([w], lr=0.01, momentum=M)
    w.grad = torch.ones_like(w)
    opt.step()  # v = -0.01
    opt.param_groups[0]["lr"] = 0.001
    w.grad = torch.zeros_like(w)
    opt.step()  # v = 0.9 * -0.01 regardless of the new lr
    assert float(opt.state[w]["velocity"]) == pytest.approx(-0.009, rel=1e-12)
    assert float(w.detach()) == pytest.approx(-0.019, rel=1e-12)


def test_state_dict_round_trip_continues_identically():
    model, x, y = _problem(3)
    a = copy.deepcopy(model)
    opt_a = PaperSGD(parameter_groups(a, WD, False), lr=0.01)
    for _ in range(3):
        opt_a.zero_grad()
        _loss(a, x.float(), y).backward()
        opt_a.step()
    b = copy.deepcopy(a)
    opt_b = PaperSGD(parameter_groups(b, WD, False), lr=0.5)  # other lr: the state's must win
    opt_b.load_state_dict(copy.deepcopy(opt_a.state_dict()))
    assert opt_b.param_groups[0]["lr"] == 0.01
    for opt, m in ((opt_a, a), (opt_b, b)):
        for lr in (0.01, 0.001):
            for group in opt.param_groups:
                group["lr"] = lr
            opt.zero_grad()
            _loss(m, x.float(), y).backward()
            opt.step()
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))


def test_config_key_and_preset():
    assert from_dict({}).optimizer == "torch"  # PyTorch's SGD stays the default elsewhere
    cfg = preset("imagenet-paper")
    assert cfg.optimizer == "paper" and cfg.decay_bias is False and cfg.weight_decay == 5e-4
    with pytest.raises(ConfigError, match="'optimizer'"):
        from_dict({"optimizer": "adam"})
    with pytest.raises(ConfigError, match="'nesterov'"):
        from_dict({"optimizer": "paper", "nesterov": True}).validate()
    with pytest.raises(ConfigError, match="invalid lr"):
        PaperSGD([torch.nn.Parameter(torch.zeros(1))], lr=0)


def test_trainer_uses_the_paper_rule_and_resumes_exactly(tmp_path):
    """optimizer 'paper' through the trainer, a step schedule with a drop inside the run,
    stopped mid-epoch and resumed: bit-identical to the uninterrupted run (velocities restored)."""
    opts = {"optimizer": "paper", "schedule": "step", "step_size": 1.0, "step_gamma": 0.1, "lr": 0.05}
    train(tiny_config(tmp_path / "a", **opts), train_set=Blobs(), val_set=Blobs(32, seed=1))
    part = train(tiny_config(tmp_path / "b", max_steps=8, **opts), train_set=Blobs(), val_set=Blobs(32, seed=1))
    assert part.status == "max_steps"
    done = train(tiny_config(tmp_path / "b", **opts), train_set=Blobs(), val_set=Blobs(32, seed=1), resume=True)
    assert done.status == "completed"
    a, b = weights(tmp_path / "a"), weights(tmp_path / "b")
    assert all(torch.equal(a[k], b[k]) for k in a)
    # and it is not torch's rule: the same run with optimizer 'torch' ends elsewhere
    train(tiny_config(tmp_path / "c", **{**opts, "optimizer": "torch"}), train_set=Blobs(), val_set=Blobs(32, seed=1))
    c = weights(tmp_path / "c")
    assert any(not torch.equal(a[k], c[k]) for k in a)


def test_convert_state_keeps_the_motion_between_the_two_forms():
    """At a constant lr the two rules are one sequence of weights (v = -lr b): a run switched
    from one optimiser to the other mid-way, its velocities converted, goes on exactly as the
    unswitched run; left unconverted it would restart from rest and end elsewhere."""
    model, x, y = _problem(4)
    x = x.float()

    def steps(opt, m, n):
        for _ in range(n):
            opt.zero_grad()
            _loss(m, x, y).backward()
            opt.step()

    for first, second in (("torch", "paper"), ("paper", "torch")):
        ref = copy.deepcopy(model)
        steps(build_optimizer(first, parameter_groups(ref, WD, False), lr=0.02, momentum=0.9), ref, 6)
        m = copy.deepcopy(model)
        opt = build_optimizer(first, parameter_groups(m, WD, False), lr=0.02, momentum=0.9)
        steps(opt, m, 3)
        assert state_kind(opt.state_dict()) == first
        fresh = build_optimizer(second, parameter_groups(m, WD, False), lr=0.02, momentum=0.9)
        raw, own_keys = copy.deepcopy(opt.state_dict()), set(fresh.param_groups[0])
        assert load_state(fresh, copy.deepcopy(opt.state_dict()), second) == first
        assert state_kind(fresh.state_dict()) == second
        assert set(fresh.param_groups[0]) == own_keys  # its own kind's settings, none of the other's
        cold = copy.deepcopy(m)
        steps(fresh, m, 3)
        assert _max_diff(ref.state_dict(), m.state_dict()) < 1e-6, (first, second)
        unconverted = build_optimizer(second, parameter_groups(cold, WD, False), lr=0.02, momentum=0.9)
        unconverted.load_state_dict(raw)  # as before: the other kind's velocities are not read
        for group, own in zip(unconverted.param_groups, fresh.param_groups, strict=True):
            group.update({k: v for k, v in own.items() if k != "params"})
        steps(unconverted, cold, 3)
        assert _max_diff(ref.state_dict(), cold.state_dict()) > 1e-4
    assert state_kind({"state": {}, "param_groups": []}) is None


def test_a_resume_that_switches_optimiser_converts_and_applies_the_new_settings(tmp_path, caplog):
    opts = {"schedule": "constant", "lr": 0.05, "momentum": 0.9}
    data, val = Blobs(), Blobs(32, seed=1)
    train(tiny_config(tmp_path / "a", **opts), train_set=data, val_set=val)
    train(tiny_config(tmp_path / "b", max_steps=8, **opts), train_set=data, val_set=val)
    with caplog.at_level("INFO", logger="alexnet"):
        train(tiny_config(tmp_path / "b", optimizer="paper", **opts), train_set=data, val_set=val, resume=True,
              allow_changes=True)
    assert "converted from the 'torch' optimiser's form to the 'paper' one's" in caplog.text
    a, b = weights(tmp_path / "a"), weights(tmp_path / "b")
    assert max(float((a[k].float() - b[k].float()).abs().max()) for k in a) < 1e-4
    # a changed weight decay takes effect on resume (the checkpoint's groups used to win)
    train(tiny_config(tmp_path / "c", max_steps=8, **opts), train_set=data, val_set=val)
    trainer = Trainer(tiny_config(tmp_path / "c", weight_decay=0.01, **opts), train_set=data, val_set=val,
                      resume=True, allow_changes=True)
    trainer.load()
    assert trainer.optimizer.param_groups[0]["weight_decay"] == 0.01


def test_convert_state_refuses_an_unknown_kind():
    with pytest.raises(ConfigError, match="'optimizer'"):
        convert_state({"state": {}, "param_groups": []}, "adam")


# --------------------------------------------------------------------------- Muon


def _conv_problem(seed: int = 0) -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, bias=False), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
                                torch.nn.Flatten(), torch.nn.Linear(8 * 4 * 4, 3))
    return model, torch.randn(16, 3, 6, 6, generator=g), torch.randint(0, 3, (16,), generator=g)


def test_orthogonalize_keeps_the_directions_and_evens_the_singular_values():
    """A gradient whose singular values spread 14:1 comes out near U V^T (spread under 2:1);
    one spread 1000:1 is evened 15-fold (three iterations lift the smallest ones ~40x)."""
    for decades, spread, cosine in ((1, 2.0, 0.95), (3, 75.0, 0.75)):
        g = torch.randn(48, 200, generator=torch.Generator().manual_seed(0))
        g = g * torch.logspace(0, -decades, 48).unsqueeze(1)
        u, s0, vh = torch.linalg.svd(g, full_matrices=False)
        for m, uv in ((g, u @ vh), (g.T, (u @ vh).T)):  # wide and tall
            o = orthogonalize(m)
            s = torch.linalg.svdvals(o)
            assert o.shape == m.shape and o.dtype == m.dtype
            assert float(s.max()) < 1.25 and float(s.max() / s.min()) < spread
            assert float(s0.max() / s0.min()) > 6 * spread
            assert float(torch.nn.functional.cosine_similarity(o.flatten(), uv.flatten(), dim=0)) > cosine


def test_muon_steps_sgd_groups_as_torch_and_filters_by_the_orthogonal_rule():
    """Linear weights and biases take torch's Nesterov SGD step exactly; the filter bank is
    scaled back to norm sqrt(out), then moves by lr along orthogonalize(g + m b), whatever the
    gradient's scale (a loss x1000 takes the same step)."""
    orth = {"lr_scale": 1.0, "momentum": 0.6, "normalize": True}
    model, x, y = _problem(5)
    x = x.float()
    ref, a = copy.deepcopy(model), copy.deepcopy(model)
    sgd = build_optimizer("torch", parameter_groups(ref, WD, False), lr=0.1, momentum=0.9, nesterov=True)
    muon = build_optimizer("muon", parameter_groups(a, WD, False, orthogonal=orth), lr=0.1, momentum=0.9,
                           nesterov=True)
    for _ in range(4):
        for opt, m in ((sgd, ref), (muon, a)):
            opt.zero_grad()
            _loss(m, x, y).backward()
            opt.step()
    assert _max_diff(ref.state_dict(), a.state_dict()) < 1e-6
    assert _max_diff(model.state_dict(), a.state_dict()) > 1e-3

    model, x, y = _conv_problem()
    a, big = copy.deepcopy(model), copy.deepcopy(model)
    muon, muon_big = (build_optimizer("muon", parameter_groups(m, WD, False, orthogonal=orth), lr=0.1, momentum=0.9,
                                      nesterov=True) for m in (a, big))
    assert [bool(g.get("orthogonal")) for g in muon.param_groups] == [False, False, True]
    w, b = a[0].weight, torch.zeros_like(a[0].weight)
    for step in range(3):
        for opt, m, scale in ((muon, a, 1.0), (muon_big, big, 1000.0)):
            opt.zero_grad()
            (_loss(m, x, y) * scale).backward()
        before, grad = w.detach().clone(), w.grad.clone()
        muon.step(), muon_big.step()
        b = 0.6 * b + grad
        expected = before * (8**0.5 / before.norm()) - 0.1 * orthogonalize((grad + 0.6 * b).reshape(8, -1)).view_as(w)
        assert torch.allclose(w, expected, atol=1e-6)
        if step == 0:  # the same first step at any gradient scale (up to bf16); SGD's is 1000x
            assert torch.allclose(a[0].weight, big[0].weight, atol=1e-2)
            assert not torch.allclose(a[4].weight, big[4].weight, atol=1.0)
    # without normalize, decoupled weight decay instead: W <- (1 - lr wd) W - lr O
    p = torch.nn.Parameter(torch.ones(4, 2, 1, 1))
    opt = build_optimizer("muon", [{"params": [p], "orthogonal": True, "weight_decay": 0.5}], lr=0.1, momentum=0.0)
    p.grad = torch.ones_like(p)
    opt.step()
    assert torch.allclose(p, 0.95 - 0.1 * orthogonalize(torch.ones(4, 2)).view(4, 2, 1, 1))
    with pytest.raises(ConfigError, match="ndim >= 2"):
        build_optimizer("muon", [{"params": [torch.nn.Parameter(torch.zeros(3))], "orthogonal": True}], lr=0.1,
                        momentum=0.9)


def test_trainer_with_muon_groups_filters_and_resumes_exactly(tmp_path):
    """optimizer 'muon' through the trainer: the filters in their own group at muon_lr (the
    schedule's shape), momentum and normalize from the config; stopped mid-run and resumed,
    bit-identical to the uninterrupted run (momentum buffers restored)."""
    opts = {"optimizer": "muon", "muon_lr": 0.1, "muon_momentum": 0.5, "muon_normalize": True, "nesterov": True,
            "schedule": "linear", "lr": 0.05, "model": "alexnet_fast", "model_options": {"width": 0.125},
            "crop": 16}
    trainer = Trainer(tiny_config(tmp_path / "t", **opts), train_set=Blobs(), val_set=Blobs(32, seed=1))
    filters = [g for g in trainer.optimizer.param_groups if g.get("orthogonal")]
    assert len(filters) == 1 and all(p.ndim == 4 for p in filters[0]["params"])
    assert filters[0]["lr_scale"] == pytest.approx(2.0) and filters[0]["momentum"] == 0.5 and filters[0]["normalize"]
    assert len(filters[0]["params"]) == 6  # conv2..conv7; conv1 (the whitening) is frozen
    train(tiny_config(tmp_path / "a", **opts), train_set=Blobs(), val_set=Blobs(32, seed=1))
    assert train(tiny_config(tmp_path / "b", max_steps=7, **opts), train_set=Blobs(),
                 val_set=Blobs(32, seed=1)).status == "max_steps"
    assert train(tiny_config(tmp_path / "b", **opts), train_set=Blobs(), val_set=Blobs(32, seed=1),
                 resume=True).status == "completed"
    a, b = weights(tmp_path / "a"), weights(tmp_path / "b")
    assert all(torch.equal(a[k], b[k]) for k in a)
    train(tiny_config(tmp_path / "c", **{**opts, "optimizer": "torch"}), train_set=Blobs(), val_set=Blobs(32, seed=1))
    c = weights(tmp_path / "c")
    assert any(not torch.equal(a[k], c[k]) for k in a if k.endswith("weight"))
    # a torch-SGD checkpoint has no filter group: resuming it with Muon is refused, with the reason
    train(tiny_config(tmp_path / "d", max_steps=3, **{**opts, "optimizer": "torch"}), train_set=Blobs(),
          val_set=Blobs(32, seed=1))
    with pytest.raises(TrainingError, match="to or from 'muon'"):
        train(tiny_config(tmp_path / "d", **opts), train_set=Blobs(), val_set=Blobs(32, seed=1), resume=True,
              allow_changes=True)
