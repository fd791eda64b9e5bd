"""Checks testdata/digits/digits.txt against scikit-learn's copy of the UCI digits.

Run with the scikit-learn of `.ci/suite/60-learning`'s venv. `--write` regenerates the
file from scikit-learn (the only source it may come from). Prints `N passed, M failed`.
"""

import pathlib
import sys

import numpy as np
from sklearn.datasets import load_digits

ROOT = pathlib.Path(__file__).resolve().parents[2]
COPY = ROOT / "testdata" / "digits" / "digits.txt"
# One character per pixel value 0..16.
ALPHABET = "0123456789abcdefg"


def encode(images, labels):
    lines = []
    for image, label in zip(images, labels):
        pixels = "".join(ALPHABET[int(v)] for v in image)
        lines.append(f"{int(label)} {pixels}\n")
    return "".join(lines)


def decode(text):
    images, labels = [], []
    for number, line in enumerate(text.splitlines(), start=1):
        label, pixels = line.split(" ")
        if len(pixels) != 64:
            raise ValueError(f"line {number}: {len(pixels)} pixels, expected 64")
        labels.append(int(label))
        images.append([ALPHABET.index(c) for c in pixels])
    return np.array(images, dtype=np.int64), np.array(labels, dtype=np.int64)


def main():
    data = load_digits()
    reference_images = data.data.astype(np.int64)
    reference_labels = data.target.astype(np.int64)
    if "--write" in sys.argv:
        COPY.write_text(encode(reference_images, reference_labels))
        print(f"wrote {COPY}")
    images, labels = decode(COPY.read_text())
    checks = [
        ("1797 images", len(images) == 1797),
        ("64 pixels each", images.shape == (1797, 64)),
        ("pixels in 0..16", bool(((images >= 0) & (images <= 16)).all())),
        ("10 classes", sorted(set(labels.tolist())) == list(range(10))),
        ("labels equal scikit-learn's", np.array_equal(labels, reference_labels)),
        ("pixels equal scikit-learn's", np.array_equal(images, reference_images)),
        ("the 8x8 images equal scikit-learn's",
         np.array_equal(images.reshape(-1, 8, 8), data.images.astype(np.int64))),
        ("byte-exact re-encoding", COPY.read_text() == encode(reference_images, reference_labels)),
    ]
    failed = 0
    for name, ok in checks:
        print(f"{'ok  ' if ok else 'FAIL'} {name}")
        failed += not ok
    print(f"{len(checks) - failed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
