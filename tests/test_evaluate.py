import pytest
import torch
import torch.nn.functional as F

from byol_bench.trial import evaluate
from byol_bench.trial.evaluate import ProbeRecipe, knn_predict, linear_probe, topk_accuracy


def _brute_force_knn(bank, labels, test, classes, k, t):
    bank, test = F.normalize(bank, dim=1), F.normalize(test, dim=1)
    scores = torch.zeros(len(test), classes)
    for i, row in enumerate(test):
        sims = bank @ row
        for j in sims.argsort(descending=True)[:k]:
            scores[i, labels[j]] += torch.exp(sims[j] / t)
    return scores


def test_knn_matches_a_brute_force_reference(monkeypatch):
    g = torch.Generator().manual_seed(0)
    bank, test = torch.randn(300, 16, generator=g), torch.randn(40, 16, generator=g)
    labels = torch.randint(0, 5, (300,), generator=g)
    monkeypatch.setattr(evaluate, "KNN_MAX_SIMILARITIES", 300 * 7)  # force several chunks
    scores = knn_predict(bank, labels, test, 5, k=25, t=0.1)
    reference = _brute_force_knn(bank, labels, test, 5, 25, 0.1)
    torch.testing.assert_close(scores, reference, rtol=1e-4, atol=1e-4)


def test_topk_accuracy_counts_hits_within_k():
    scores = torch.tensor([[0.1, 0.9, 0.0], [0.8, 0.1, 0.3], [0.2, 0.3, 0.5]])
    labels = torch.tensor([1, 2, 0])
    acc = topk_accuracy(scores, labels, ks=(1, 2))
    assert acc[1] == pytest.approx(1 / 3) and acc[2] == pytest.approx(2 / 3)


def test_probe_separates_linearly_separable_features():
    g = torch.Generator().manual_seed(0)
    centres = torch.randn(4, 32, generator=g) * 4
    labels = torch.randint(0, 4, (800,), generator=g)
    features = centres[labels] + torch.randn(800, 32, generator=g)
    scores = linear_probe(features[:600], labels[:600], features[600:], 4, ProbeRecipe(epochs=30), seed=0)
    assert topk_accuracy(scores, labels[600:])[1] > 0.99


def test_probe_is_at_chance_on_random_labels():
    g = torch.Generator().manual_seed(1)
    features = torch.randn(1000, 16, generator=g)
    labels = torch.randint(0, 4, (1000,), generator=g)
    scores = linear_probe(features[:800], labels[:800], features[800:], 4, ProbeRecipe(epochs=10), seed=0)
    assert topk_accuracy(scores, labels[800:])[1] < 0.4
