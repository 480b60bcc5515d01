import pytest
import torch

from byol_bench.backbones import build_backbone
from byol_bench.methods import METHODS, uses_momentum
from byol_bench.views import TensorViews
from byol_bench.data import make_synthetic


def _method(name, cfg):
    torch.manual_seed(0)
    backbone, dim = build_backbone("small-cnn", 3, 32)
    return METHODS[name](backbone, dim, cfg)


def _fixed_views(seed=0):
    images, _ = make_synthetic(64, seed=seed)
    views = TensorViews(METHODS["simclr"].views, 32, 3, (0.5,) * 3, (0.25,) * 3, seed=seed, device="cpu")
    return views(images)


@pytest.mark.parametrize("name", sorted(METHODS))
def test_loss_falls_on_a_fixed_batch(name, tiny_config):
    method = _method(name, tiny_config(method=name))
    view0, view1 = _fixed_views()
    optimizer = torch.optim.SGD([p for p in method.parameters() if p.requires_grad], lr=0.05, momentum=0.9)
    losses = []
    for _ in range(15):
        loss = method(view0, view1)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if uses_momentum(method):
            method.update_target(0.99)
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.05, losses


def _params(module):
    return [p.detach().clone() for p in module.parameters()]


def test_byol_target_gets_no_gradient_and_follows_the_ema(tiny_config):
    method = _method("byol", tiny_config(method="byol"))
    view0, view1 = _fixed_views()
    target_before = _params(method.target_backbone)
    method(view0, view1).backward()
    assert all(p.grad is None for p in method.target_backbone.parameters())
    assert all(p.grad is None for p in method.target_projection_head.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in method.backbone.parameters())
    with torch.no_grad():  # move the online network so that the EMA has something to follow
        for p in method.backbone.parameters():
            p.add_(1.0)
    online = _params(method.backbone)
    method.update_target(0.9)
    for target, before, now in zip(method.target_backbone.parameters(), target_before, online):
        torch.testing.assert_close(target.detach(), 0.9 * before + 0.1 * now)


def test_byols_target_update_equals_lightlys_module_by_module(tiny_config):
    import copy

    from lightly.models.utils import update_momentum

    method = _method("byol", tiny_config(method="byol"))
    with torch.no_grad():
        for p in method.parameters():
            p.add_(torch.randn_like(p))  # online and target apart
    reference = copy.deepcopy(method)
    method.update_target(0.99)
    update_momentum(reference.backbone, reference.target_backbone, m=0.99)
    update_momentum(reference.projection_head, reference.target_projection_head, m=0.99)
    for (name, got), expected in zip(method.state_dict().items(), reference.state_dict().values()):
        assert torch.equal(got, expected), name


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
    view0, view1 = _fixed_views()
    grads = {}
    for stop in (True, False):
        method = _method("simsiam", tiny_config(method="simsiam", stop_gradient=stop))
        method(view0, view1).backward()
        grads[stop] = method.projection_head.layers[0].weight.grad.clone()  # reached by both branches
    assert not torch.allclose(grads[True], grads[False])


def test_the_evaluated_backbone_is_byols_online_one(tiny_config):
    """The evaluation reads ``method.backbone``: for BYOL it must be the network SGD trains, not the EMA
    target (lightly#1471)."""
    method = _method("byol", tiny_config(method="byol"))
    optimizer = torch.optim.SGD([p for p in method.parameters() if p.requires_grad], lr=0.1)
    before = _params(method.backbone)
    method(*_fixed_views()).backward()
    optimizer.step()
    assert any(not torch.equal(now, then) for now, then in zip(_params(method.backbone), before))
    assert all(p.requires_grad for p in method.backbone.parameters())
    assert not any(p.requires_grad for p in method.target_backbone.parameters())
