"""What makes two figures comparable (the protocol), what a trial's floors depend on, and how a trial or a setting
is named: one definition each, for the floors a sweep shares, the knobs a search may not tune, ``report A B``,
compare's groups and the history's settings."""

from __future__ import annotations


# The protocol: the knobs two figures must share to be compared -- which images (how many, at what size, which split
# scores them), the backbone, the pretraining budget and how the frozen backbone is evaluated -- with their names in
# documents. What a benchmark compares across (the method, its batch size and knobs, the seed) is not in it.
PROTOCOL = {"dataset": "data set", "data_dir": "data folder", "subset": "train subset", "test_subset": "test subset",
            "validation": "validation split", "image_size": "image size", "view_size": "view size",
            "store_size": "stored size", "backbone": "backbone", "epochs": "pretraining epochs", "knn_k": "kNN k", "knn_t": "kNN T",
            "probe_epochs": "probe epochs", "probe_lr": "probe lr", "probe_label_fractions": "label fractions",
            "eval_datasets": "transfer data sets"}
# What a trial's floors (random-init backbone, raw pixels) depend on: the protocol less pretraining, and the seed that
# initialises the random backbone. Trials that agree on these share them.
FLOOR_KNOBS = (*(key for key in PROTOCOL if key not in ("epochs", "view_size")), "seed")


def floor_setting(cfg) -> tuple:
    """A trial config's values of the knobs its floors depend on: trials with the same share the floors."""
    return tuple(getattr(cfg, key) for key in FLOOR_KNOBS)


def setting_label(values: dict, separator: str = ",") -> str:
    """A trial's or a setting's name: its knobs as key=value, in order (a trial id joins them with ',')."""
    return separator.join(f"{key}={value}" for key, value in values.items())


# Each accuracy beside the floor it is read against, and the floor's name: a trial under one is a finding (at a short
# budget, SSL features may not yet beat raw pixels), which the console and the report name.
FLOOR_PAIRS = (("knn_top1", "random_init_knn_top1", "random-init kNN"),
               ("knn_top1", "raw_pixels_knn_top1", "raw-pixel kNN"),
               ("linear_top1", "random_init_linear_top1", "random-init linear"))


def floors_under(values) -> list[str]:
    """The floors a trial's accuracy is under (``values``: a result's metrics and floors, or a table row), each as
    "<floor> (<accuracy> < <floor's>)"; empty where it measured none or is above all."""
    def known(value) -> bool:
        return value is not None and value == value  # None or NaN: not measured

    return [f"{name} ({values[metric]:.3f} < {values[floor]:.3f})" for metric, floor, name in FLOOR_PAIRS
            if known(values.get(metric)) and known(values.get(floor)) and values[metric] < values[floor]]
