"""An example byol-bench plug-in package: the TiCo method and a GroupNorm CNN backbone (see README.md)."""
