"""A learnable stand-in for CIFAR-10, in its distributed "python version" format.

    python scripts/synthetic_cifar.py DIR [--per-batch 10000] [--seed 0]

Writes ``DIR/cifar-10-batches-py/data_batch_1 … _5`` and ``test_batch``: each image is
its class's fixed random template plus independent noise, as uint8 (so a network can learn
it). It stands in for the real data where there is no network access, e.g. to time
``dropdyn run alignment --model vgg16 --dataset cifar10`` on a GPU machine; its figures
are not the paper's. The real data: https://www.cs.toronto.edu/~kriz/cifar.html
"""

import argparse
import pickle
from pathlib import Path

import numpy as np


def write(folder: Path, per_batch: int = 10000, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    templates = rng.uniform(40, 215, (10, 3072))
    out = Path(folder) / "cifar-10-batches-py"
    out.mkdir(parents=True, exist_ok=True)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        labels = rng.integers(0, 10, per_batch)
        images = templates[labels] + rng.normal(0, 40, (per_batch, 3072))
        batch = {b"data": np.clip(images, 0, 255).astype(np.uint8), b"labels": labels.tolist()}
        (out / name).write_bytes(pickle.dumps(batch, protocol=2))
    return out


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("dir")
    p.add_argument("--per-batch", type=int, default=10000, help="images per batch file (6 files)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    print(write(Path(args.dir), args.per_batch, args.seed))


if __name__ == "__main__":
    main()
