"""``python -m byol_bench.cli``: the byol-bench command (torchrun starts a DDP trial's ranks so)."""

import sys

from byol_bench.cli import main

sys.exit(main())
