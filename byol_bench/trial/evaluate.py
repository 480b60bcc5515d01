"""Frozen-backbone evaluation: weighted kNN and a linear probe on features extracted once, the collapse
indicators, and the floors (the same protocol on a random-init backbone and on raw pixels).

In a DDP trial each rank extracts the features of its share of the images and every rank gets them all.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from byol_bench.config import listed
from byol_bench.data.datasets import stratified_subset
from byol_bench.trial.distributed import gather_rows, shard, world_size
from byol_bench.trial.views import normalize

EMBEDDING_POINTS = 500  # test images in an embedding map: t-SNE's time grows faster than their number
KNN_MAX_SIMILARITIES = 1 << 25  # elements of one test-chunk x bank similarity block (128 MiB in fp32)
# Images per forward when extracting features: on a CPU a smaller batch's activations stay in its caches, which is
# faster per image (benchmarks/test_hot_paths.py::test_feature_extraction measures both); a GPU wants large batches.
CPU_EXTRACT_BATCH, EXTRACT_BATCH = 128, 512


@dataclass(frozen=True)
class ProbeRecipe:
    """The linear probe's knobs; with PROBE_METHOD, the recipe recorded with every result."""

    epochs: int = 100
    lr: float = 0.01
    batch_size: int = 1024
    weight_decay: float = 0.0


PROBE_METHOD = {"classifier": "linear", "optimizer": "AdamW", "schedule": "cosine decay per step",
                "features": "frozen, extracted once, standardised with the train set's mean and std"}


@torch.no_grad()
def extract_features(backbone: nn.Module, images: Tensor, mean, std, device, batch_size: int | None = None,
                     size: int | None = None) -> Tensor:
    """Features of un-augmented images (uint8 on any device, a memory map's too) in eval mode, returned on
    ``device``; by default ``batch_size`` images per forward: CPU_EXTRACT_BATCH on a CPU, else EXTRACT_BATCH.
    Images stored larger than ``size`` are resized to it (antialiased), a batch at a time."""
    batch_size = batch_size or (CPU_EXTRACT_BATCH if torch.device(device).type == "cpu" else EXTRACT_BATCH)
    was_training = backbone.training
    backbone.eval()
    chunks = []
    for start in range(0, len(images), batch_size):
        batch = at_size(images[start : start + batch_size].to(device, non_blocking=True).float().div_(255), size)
        chunks.append(backbone(normalize(batch, mean, std)).float())
    backbone.train(was_training)
    return torch.cat(chunks)


@torch.no_grad()
def knn_predict(train_features: Tensor, train_labels: Tensor, test_features: Tensor, num_classes: int,
                k: int = 200, t: float = 0.1) -> Tensor:
    """Weighted kNN (InstDisc): cosine similarity, the k nearest vote with weight exp(sim / t).

    Returns class scores (num_test, num_classes). Test rows are processed in chunks so that the
    similarity block stays under KNN_MAX_SIMILARITIES elements whatever the bank's size.
    """
    bank = F.normalize(train_features, dim=1)
    test = F.normalize(test_features, dim=1)
    k = min(k, len(bank))
    chunk = max(1, KNN_MAX_SIMILARITIES // len(bank))
    scores = []
    for start in range(0, len(test), chunk):
        similarity = test[start : start + chunk] @ bank.T
        top_sim, top_idx = similarity.topk(k, dim=1)
        weights = (top_sim / t).exp()
        votes = torch.zeros(len(top_idx), num_classes, device=bank.device)
        votes.scatter_add_(1, train_labels[top_idx], weights)
        scores.append(votes)
    return torch.cat(scores)


def topk_accuracy(scores: Tensor, labels: Tensor, ks=(1, 5)) -> dict[int, float]:
    ranked = scores.topk(min(max(ks), scores.shape[1]), dim=1).indices
    hits = ranked == labels[:, None]
    return {k: hits[:, :k].any(dim=1).float().mean().item() for k in ks}


def linear_probe(train_features: Tensor, train_labels: Tensor, test_features: Tensor, num_classes: int,
                 recipe: ProbeRecipe, seed: int = 0) -> Tensor:
    """Train a linear classifier on cached, standardised features; return test-set class scores."""
    mean, std = train_features.mean(0), train_features.std(0).clamp_min(1e-6)
    train_x, test_x = (train_features - mean) / std, (test_features - mean) / std
    g = torch.Generator().manual_seed(seed)
    classifier = nn.Linear(train_x.shape[1], num_classes).to(train_x.device)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        classifier.reset_parameters()
    optimizer = torch.optim.AdamW(classifier.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay)
    steps_per_epoch = max(1, -(-len(train_x) // recipe.batch_size))
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, recipe.epochs * steps_per_epoch)
    with torch.enable_grad():
        for _ in range(recipe.epochs):
            order = torch.randperm(len(train_x), generator=g).to(train_x.device)
            for start in range(0, len(order), recipe.batch_size):
                idx = order[start : start + recipe.batch_size]
                loss = F.cross_entropy(classifier(train_x[idx]), train_labels[idx])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                scheduler.step()
    with torch.no_grad():
        return classifier(test_x)


def evaluate_features(train_features: Tensor, train_labels: Tensor, test_features: Tensor, test_labels: Tensor,
                      num_classes: int, knn_k: int, knn_t: float, probe: ProbeRecipe | None, seed: int = 0) -> dict:
    """kNN top-1/top-5 and, when a probe recipe is given, linear-probe top-1/top-5."""
    knn = topk_accuracy(knn_predict(train_features, train_labels, test_features, num_classes, knn_k, knn_t), test_labels)
    result = {"knn_top1": knn[1], "knn_top5": knn[5]}
    if probe is not None:
        linear = topk_accuracy(linear_probe(train_features, train_labels, test_features, num_classes, probe, seed), test_labels)
        result.update(linear_top1=linear[1], linear_top5=linear[5])
    return result


def low_label_metric(metric: str, fraction: float) -> str:
    """The name of ``metric`` measured with ``fraction`` of the labels: linear_top1 at 0.01 is linear_top1_1pct."""
    return f"{metric}_{fraction * 100:g}pct".replace(".", "p")


def embedding_map(features: Tensor, seed: int) -> tuple[list, str]:
    """2-D coordinates of the L2-normalised ``features`` (the kNN's cosine geometry), and the algorithm's name:
    UMAP where umap-learn is installed, else scikit-learn's t-SNE; seeded, on the trial's torch threads (the
    libraries' own default, every core, oversubscribes a trial that holds one)."""
    from threadpoolctl import threadpool_limits

    points = F.normalize(features.float(), dim=1).cpu().numpy()
    with threadpool_limits(torch.get_num_threads()):
        try:
            import umap

            return umap.UMAP(n_components=2, random_state=seed, n_jobs=1).fit_transform(points).tolist(), "UMAP"
        except ImportError:
            from sklearn.manifold import TSNE

            tsne = TSNE(n_components=2, init="pca", random_state=seed, perplexity=min(30.0, len(points) - 1.0),
                        n_jobs=1)
            return tsne.fit_transform(points).tolist(), "t-SNE"


def transfer_metric(name: str, metric: str) -> str:
    """The name of ``metric`` measured on transfer data set ``name``: transfer_cifar10_knn_top1."""
    return f"transfer_{name}_{metric}"


def representation_stats(features: Tensor) -> dict:
    """Collapse indicators of a feature matrix (N, D).

    ``embedding_std``: the per-dimension std of the L2-normalised features, times sqrt(D): about 1 when
    they spread over the sphere, 0 when every image maps to one point (SimSiam's collapse measure).
    ``effective_rank``: RankMe's exp(entropy) of the normalised singular values of the centred features:
    from 1 (everything on one line) to D.
    """
    normalised = F.normalize(features.float(), dim=1)
    embedding_std = normalised.std(dim=0).mean().item() * features.shape[1] ** 0.5
    singular = torch.linalg.svdvals(features.float() - features.float().mean(dim=0))
    if singular.sum() <= 1e-12:  # every feature identical
        return {"embedding_std": embedding_std, "effective_rank": 0.0}
    p = singular / singular.sum() + 1e-12
    return {"embedding_std": embedding_std, "effective_rank": float(torch.exp(-(p * p.log()).sum()))}


def at_size(images: Tensor, size: int | None) -> Tensor:
    """Float images at ``size`` px: as they are, or resized from the larger side they are stored at (antialiased)."""
    if size is None or images.shape[-1] == size:
        return images
    return F.interpolate(images, size=(size, size), mode="bilinear", antialias=True, align_corners=False)


def raw_pixel_features(train_images: Tensor, test_images: Tensor, mean, std, size: int | None = None) -> tuple[Tensor, Tensor]:
    """Flattened, normalised pixels (at ``size``) centred on the train mean: the floor that features must beat."""
    train, test = (normalize(at_size(x.float().div(255), size), mean, std).flatten(1) for x in (train_images, test_images))
    centre = train.mean(dim=0, keepdim=True)
    return train - centre, test - centre


@torch.no_grad()
def project(head: nn.Module, features: Tensor, batch_size: int = 4096) -> Tensor:
    """``head``'s output for ``features`` in eval mode (BatchNorm on its running statistics)."""
    was_training = head.training
    head.eval()
    projections = torch.cat([head(chunk) for chunk in features.split(batch_size)])
    head.train(was_training)
    return projections.float()


def collapse_rank(projection_dim: int) -> float:
    """Below this effective rank of its projections a trial counts as collapsed: near 1 is a full collapse
    (RankMe), and a healthy run keeps a sizeable fraction of its dimensions."""
    return max(2.0, projection_dim / 20)


class Evaluator:
    """Evaluates a frozen backbone on un-augmented train (bank/probe) and test images."""

    def __init__(self, data, cfg, device: torch.device, transfers: list | None = None):
        """``transfers``: the eval_datasets, loaded (``data.load_transfer``) before training, so that a bad one fails
        the trial before it trains."""
        self.data, self.cfg, self.device, self.transfers = data, cfg, device, transfers or []
        self.train_labels = data.train_labels.to(device)
        self.test_labels = data.test_labels.to(device)
        self.probe = ProbeRecipe(epochs=cfg.probe_epochs, lr=cfg.probe_lr)

    def _extract(self, module: nn.Module, images: Tensor) -> Tensor:
        """Features of all ``images``: in a DDP trial each rank extracts its share, then all ranks get every row."""
        local = extract_features(module, images[shard(len(images))], self.data.mean, self.data.std, self.device,
                                 size=self.data.image_size)
        return gather_rows(local, len(images))

    def _scores(self, train: Tensor, test: Tensor, with_probe: bool) -> dict:
        return evaluate_features(train, self.train_labels, test, self.test_labels, self.data.num_classes,
                                 self.cfg.knn_k, self.cfg.knn_t, self.probe if with_probe else None, self.cfg.seed)

    def knn_top1(self, backbone: nn.Module) -> float:
        """The per-epoch monitor: kNN only, no probe."""
        train, test = self._extract(backbone, self.data.train_images), self._extract(backbone, self.data.test_images)
        return self._scores(train, test, with_probe=False)["knn_top1"]

    def __call__(self, method: nn.Module) -> dict:
        """kNN and linear-probe accuracy of ``method.backbone`` (also on the low-label subsets), and the collapse
        indicators of its projections (the projection head run on the test features already extracted)."""
        train, test = self._extract(method.backbone, self.data.train_images), self._extract(method.backbone, self.data.test_images)
        return {**self._scores(train, test, with_probe=True), **self._low_label_scores(train, test),
                **self._transfer_scores(method.backbone), **representation_stats(project(method.projection_head, test))}

    def _transfer_scores(self, backbone: nn.Module) -> dict:
        """kNN and linear top-1 of ``backbone``'s features on each transfer data set, with its own train and test
        images and labels."""
        scores = {}
        for other in self.transfers:
            train, test = self._extract(backbone, other.train_images), self._extract(backbone, other.test_images)
            found = evaluate_features(train, other.train_labels.to(self.device), test,
                                      other.test_labels.to(self.device), other.num_classes, self.cfg.knn_k,
                                      self.cfg.knn_t, self.probe, self.cfg.seed)
            scores.update({transfer_metric(other.name, name): found[name] for name in ("knn_top1", "linear_top1")})
        return scores

    def _low_label_scores(self, train: Tensor, test: Tensor) -> dict:
        """kNN and linear top-1 with a seeded, class-stratified fraction of the train images' labels, for each
        fraction of ``probe_label_fractions`` below 1 (at least one image a class)."""
        scores = {}
        for fraction in (float(text) for text in listed(self.cfg.probe_label_fractions) if float(text) < 1):
            keep = stratified_subset(self.train_labels.cpu(), max(self.data.num_classes, round(fraction * len(train))),
                                     self.cfg.seed).to(self.device)
            found = evaluate_features(train[keep], self.train_labels[keep], test, self.test_labels,
                                      self.data.num_classes, self.cfg.knn_k, self.cfg.knn_t, self.probe, self.cfg.seed)
            scores.update({low_label_metric(name, fraction): found[name] for name in ("knn_top1", "linear_top1")})
        return scores

    def floors(self, random_init_backbone: nn.Module) -> dict:
        """The same protocol on a random-init backbone (with the low-label and transfer evaluations too) and, for
        images <= 32 px, kNN on raw pixels."""
        train = self._extract(random_init_backbone, self.data.train_images)
        test = self._extract(random_init_backbone, self.data.test_images)
        scores = {**self._scores(train, test, with_probe=True), **self._low_label_scores(train, test),
                  **self._transfer_scores(random_init_backbone)}
        floors = {f"random_init_{key}": value for key, value in scores.items()}
        if self.data.image_size <= 32:
            d = self.data
            train, test = raw_pixel_features(d.train_images.to(self.device), d.test_images.to(self.device), d.mean, d.std,
                                             d.image_size)
            raw = self._scores(train, test, with_probe=False)
            floors.update(raw_pixels_knn_top1=raw["knn_top1"], raw_pixels_knn_top5=raw["knn_top5"])
        return floors

    def embedding(self, backbone: nn.Module) -> dict:
        """The embedding map of ``backbone``'s features of a seeded, stratified subset of the test images: the same
        images for every backbone of the trial, so that maps can be set side by side."""
        labels = self.data.test_labels
        keep = stratified_subset(labels, min(EMBEDDING_POINTS, len(labels)), self.cfg.seed)
        points, algorithm = embedding_map(self._extract(backbone, self.data.test_images[keep]), self.cfg.seed)
        return {"algorithm": algorithm, "labels": labels[keep].tolist(), "points": points}

    def online_probe(self, backbone: nn.Module) -> OnlineProbe:
        """An online probe on ``backbone``'s features (their width read from one test image's)."""
        feature_dim = extract_features(backbone, self.data.test_images[:1], self.data.mean, self.data.std,
                                       self.device, size=self.data.image_size).shape[1]
        return OnlineProbe(backbone, self.data.mean, self.data.std, feature_dim, self.data.num_classes,
                           self.cfg.probe_lr, self.cfg.seed, self.device, self.data.image_size)

    def online_probe_top1(self, backbone: nn.Module, probe: OnlineProbe) -> float:
        """The online probe's test top-1 on ``backbone``'s features of the un-augmented test images."""
        return topk_accuracy(probe.predict(self._extract(backbone, self.data.test_images)), self.test_labels, (1,))[1]


class OnlineProbe:
    """An online linear probe (solo-learn's, on clean images): a linear classifier trained alongside pretraining,
    one step after every training step, on the backbone's features of that step's training images un-augmented,
    extracted as the test features are (eval mode, no gradient). solo-learn feeds it the augmented views' features
    instead, which on short runs left it far below the offline probe it is meant to track (docs/trials-and-metrics.md).
    A BatchNorm without weights standardises the features first, as the offline probe does.

    It changes nothing in pretraining: an eval-mode forward without gradient leaves the weights and the
    BatchNorm statistics as they are, the classifier's initial weights come from a generator of its own, and its
    steps draw no random numbers."""

    def __init__(self, backbone: nn.Module, mean, std, feature_dim: int, num_classes: int, lr: float, seed: int,
                 device, size: int | None = None):
        self.backbone, self.mean, self.std, self.device, self.size = backbone, mean, std, device, size
        with torch.random.fork_rng():  # every device's generator: manual_seed seeds them all
            torch.manual_seed(seed)
            self.classifier = nn.Sequential(nn.BatchNorm1d(feature_dim, affine=False),
                                            nn.Linear(feature_dim, num_classes)).to(device)
        self.optimizer = torch.optim.AdamW(self.classifier.parameters(), lr=lr)

    def train_step(self, images: Tensor, labels: Tensor) -> None:
        """One step on this rank's training ``images`` (uint8, un-augmented) and their ``labels``, gathered from
        every rank in a DDP trial, so that the ranks' classifiers stay the same."""
        features = extract_features(self.backbone, images, self.mean, self.std, self.device, size=self.size)
        features = gather_rows(features, len(features) * world_size())
        labels = gather_rows(labels.to(self.device), len(labels) * world_size())
        self.classifier.train()
        loss = F.cross_entropy(self.classifier(features), labels)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()

    @torch.no_grad()
    def predict(self, features: Tensor) -> Tensor:
        self.classifier.eval()
        return self.classifier(features)

    def state_dict(self) -> dict:
        return {"classifier": self.classifier.state_dict(), "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.classifier.load_state_dict(state["classifier"])
        self.optimizer.load_state_dict(state["optimizer"])
