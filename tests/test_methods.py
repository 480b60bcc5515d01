import copy

import pytest
import torch

from byol_bench.models.backbones import build_backbone
from byol_bench.models.method import Method, interface_problems
from byol_bench.models.methods import BUILT_IN_METHODS, METHODS, uses_momentum
from byol_bench.models.view_recipe import ViewRecipe
from byol_bench.trial.conformance import check_loss_falls, fixed_views

MOMENTUM_METHODS = sorted(name for name in BUILT_IN_METHODS if uses_momentum(METHODS[name]))


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """One torch thread, as the suite's tiny trials use: the steps here are too small to share out."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


SIZE = 16  # px: small images keep ten methods' steps cheap


def _method(name, cfg):
    torch.manual_seed(0)
    backbone, dim = build_backbone("small-cnn", 3, SIZE)
    return METHODS[name](backbone, dim, cfg)


@pytest.mark.parametrize("name", sorted(BUILT_IN_METHODS))
def test_loss_falls_on_a_fixed_batch(name, tiny_config):
    check = check_loss_falls(tiny_config(method=name))  # what byol-bench check-method runs on a plug-in too
    assert check.passed, check.detail


def _params(module):
    return [p.detach().clone() for p in module.parameters()]


def _target(method):
    return [*method.target_backbone.parameters(), *method.target_projection_head.parameters()]


@pytest.mark.parametrize("name", MOMENTUM_METHODS)
def test_a_target_network_gets_no_gradient_and_moves_only_by_the_ema(name, tiny_config):
    cfg = tiny_config(method=name)
    method = _method(name, cfg)
    target_before = [p.detach().clone() for p in _target(method)]
    optimizer = torch.optim.SGD([p for p in method.parameters() if p.requires_grad], lr=0.1)
    method(*fixed_views(cfg)).backward()
    optimizer.step()
    assert all(p.grad is None for p in _target(method))
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in method.backbone.parameters())
    assert all(torch.equal(now, before) for now, before in zip(_target(method), target_before))  # the step left it
    with torch.no_grad():  # move the online network so that the EMA has something to follow
        for p in method.backbone.parameters():
            p.add_(1.0)
    online = [*_params(method.backbone), *_params(method.projection_head)]
    method.update_target(0.9)
    for target, before, now in zip(_target(method), target_before, online):
        torch.testing.assert_close(target.detach(), 0.9 * before + 0.1 * now)


@pytest.mark.parametrize("name", MOMENTUM_METHODS)
def test_a_target_update_equals_lightlys_module_by_module(name, tiny_config):
    from lightly.models.utils import update_momentum

    method = _method(name, tiny_config(method=name))
    with torch.no_grad():
        for p in method.parameters():
            p.add_(torch.randn_like(p))  # online and target apart
    reference = copy.deepcopy(method.state_dict())
    method.update_target(0.99)
    twin = _method(name, tiny_config(method=name))
    twin.load_state_dict(reference)
    update_momentum(twin.backbone, twin.target_backbone, m=0.99)
    update_momentum(twin.projection_head, twin.target_projection_head, m=0.99)
    for (key, got), expected in zip(method.state_dict().items(), twin.state_dict().values()):
        assert torch.equal(got, expected), key


@pytest.mark.parametrize("tau, expect", [(1.0, "frozen"), (0.0, "copy")])
def test_byol_momentum_endpoints(tau, expect, tiny_config):
    method = _method("byol", tiny_config(method="byol"))
    with torch.no_grad():
        for p in method.backbone.parameters():
            p.mul_(2.0).add_(0.5)
    before = _params(method.target_backbone)
    method.update_target(tau)
    reference = before if expect == "frozen" else _params(method.backbone)
    for target, ref in zip(method.target_backbone.parameters(), reference):
        torch.testing.assert_close(target.detach(), ref)


def test_simsiam_stop_gradient_switch_controls_the_target_branch(tiny_config):
    grads = {}
    for stop in (True, False):
        cfg = tiny_config(method="simsiam", stop_gradient=stop)
        method = _method("simsiam", cfg)
        method(*fixed_views(cfg)).backward()
        grads[stop] = method.projection_head.layers[0].weight.grad.clone()  # reached by both branches
    assert not torch.allclose(grads[True], grads[False])


def test_the_evaluated_backbone_is_byols_online_one(tiny_config):
    """The evaluation reads ``method.backbone``: for BYOL it must be the network SGD trains, not the EMA
    target (lightly#1471)."""
    cfg = tiny_config(method="byol")
    method = _method("byol", cfg)
    optimizer = torch.optim.SGD([p for p in method.parameters() if p.requires_grad], lr=0.1)
    before = _params(method.backbone)
    method(*fixed_views(cfg)).backward()
    optimizer.step()
    assert any(not torch.equal(now, then) for now, then in zip(_params(method.backbone), before))
    assert all(p.requires_grad for p in method.backbone.parameters())
    assert not any(p.requires_grad for p in method.target_backbone.parameters())


@pytest.mark.parametrize("name, bank", [("moco", "criterion.memory_bank"), ("nnclr", "support_set")])
def test_a_memory_bank_fills_with_the_batch_and_is_kept_in_checkpoints(name, bank, tiny_config):
    """MoCo's queue takes both views' keys per step, NNCLR's support set one view's projections; both are in
    the state_dict, so that a resumed trial goes on with what it had queued."""
    cfg = tiny_config(method=name)
    method = _method(name, cfg)
    method(*fixed_views(cfg))
    state = method.state_dict()
    assert state[f"{bank}.bank"].shape == (128, 32)
    assert state[f"{bank}.bank_ptr"].item() == (2 * 32 if name == "moco" else 32)


def test_a_method_trains_with_its_own_optimizer_unless_one_is_given():
    from byol_bench.config import make_config

    barlow = make_config({"method": "barlowtwins"})
    assert (barlow.optimizer, barlow.lr, barlow.weight_decay) == ("lars", 0.1, 1.5e-6)
    given = make_config({"method": "barlowtwins", "optimizer": "sgd", "lr": 0.2})
    assert (given.optimizer, given.lr, given.weight_decay) == ("sgd", 0.2, 1.5e-6)  # each knob apart
    simclr = make_config({"method": "simclr"})
    assert (simclr.optimizer, simclr.lr, simclr.weight_decay) == ("sgd", 0.06, 5e-4)


@pytest.mark.parametrize("name", sorted(BUILT_IN_METHODS))
def test_every_built_in_method_implements_the_method_interface(name, tiny_config):
    assert interface_problems(METHODS[name]) == []
    assert isinstance(_method(name, tiny_config(name)), Method)


def test_a_method_that_breaks_the_interface_is_told_what_to_fix():
    class HalfATarget(torch.nn.Module):  # reads a momentum schedule, has no target to update; one view
        views = (ViewRecipe(),)
        config_keys = {"momentum_schedule": "constant:0.99"}

    problems = interface_problems(HalfATarget)
    assert len(problems) == 2 and problems[0].startswith("views:") and "update_target" in problems[1]
    assert "not an nn.Module" in interface_problems(object)[0]
