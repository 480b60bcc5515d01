"""Write scikit-learn's bundled handwritten digits (1,797 8x8 grayscale images, 10 classes; no download) as an
ImageFolder tree, a small second data set for transfer evaluation (``eval_datasets``) on a machine without one.

    python benchmarks/digits_imagefolder.py [OUT]     # default: <data root>/digits
"""

import sys
from pathlib import Path

import numpy as np
from PIL import Image
from sklearn.datasets import load_digits

from byol_bench.data.datasets import data_root


def main() -> None:
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else data_root(None) / "digits"
    digits = load_digits()
    for index, (image, label) in enumerate(zip(digits.images, digits.target)):
        (out / str(label)).mkdir(parents=True, exist_ok=True)
        pixels = np.round(image * 255 / 16).astype(np.uint8)  # the data set's 0-16 intensities
        Image.fromarray(pixels, mode="L").save(out / str(label) / f"{index}.png")
    print(f"wrote {len(digits.images)} images of {len(digits.target_names)} classes to {out}")


if __name__ == "__main__":
    main()
