"""The models: SSL methods (``methods/``, one file each, and the ``Method`` interface they share) and backbones."""
