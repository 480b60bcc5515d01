"""The Ray edge, the only code that imports ray: the cluster, running a sweep, the trainable, running a tune, callbacks, progress and trackers."""
