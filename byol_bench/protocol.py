"""What makes two figures comparable (the protocol), what a trial's floors depend on, and how a trial or a setting
is named: one definition each, for the floors a sweep shares, the knobs a search may not tune, ``report A B``,
compare's groups and the history's settings."""

from __future__ import annotations


# The protocol: the knobs two figures must share to be compared -- which images (how many, at what size, which split
# scores them), the backbone, the pretraining budget and how the frozen backbone is evaluated -- with their names in
# documents. What a benchmark compares across (the method, its batch size and knobs, the seed) is not in it.
PROTOCOL = {"dataset": "data set", "data_dir": "data folder", "subset": "train subset", "test_subset": "test subset",
            "validation": "validation split", "image_size": "image size", "view_size": "view size",
            "backbone": "backbone", "epochs": "pretraining epochs", "knn_k": "kNN k", "knn_t": "kNN T",
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
