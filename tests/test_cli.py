"""The command line: help, one-line errors with exit code 2, config files, run folders."""

import json
import subprocess
import sys

import pytest

from dropdyn.cli import main

SMALL = ["--width", "40", "--steps", "6", "--no-progress"]


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "dropdyn.cli", *args], capture_output=True, text=True)


def test_help_lists_experiments():
    p = run_cli("--help")
    assert p.returncode == 0 and "teacher-student" in p.stdout


@pytest.mark.parametrize(
    "args, match",
    [
        (["--keep", "0"], "keep must be in (0, 1], got 0.0"),
        (["--keep", "1.5"], "keep must be in (0, 1], got 1.5"),
        (["--lr", "-1"], "lr must be a finite positive number, got -1.0"),
        (["--lr", "nan"], "lr must be a finite positive number, got nan"),
        (["--width", "0"], "width must be an integer >= 1, got 0"),
        (["--steps", "-3"], "steps must be an integer >= 1, got -3"),
        (["--dtype", "float16"], "unknown dtype 'float16'"),
        (["--width", "abc"], "invalid integer value: 'abc'"),
        (["--bogus", "1"], "unrecognized arguments: --bogus 1"),
    ],
)
def test_bad_input_is_one_line_exit_2(args, match, tmp_path, dropdyn_cli):
    p = dropdyn_cli("run", "teacher-student", *SMALL, "--out", str(tmp_path / "r"), *args)
    assert p.returncode == 2
    assert p.stderr.count("\n") == 1 and "Traceback" not in p.stderr
    assert match in p.stderr
    assert not (tmp_path / "r").exists()


def test_unknown_experiment_exit_2():
    p = run_cli("run", "nope")
    assert p.returncode == 2 and p.stderr.count("\n") == 1 and "nope" in p.stderr


def test_config_file_and_flag_override(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("width: 30\nsteps: 4\nkeep: 0.7\nn_test: 50\n")
    out = tmp_path / "run"
    assert main(["run", "teacher-student", "--config", str(cfg), "--keep", "0.9", "--out", str(out),
                 "--no-progress"]) == 0
    resolved = json.loads((out / "config.json").read_text())["config"]
    assert resolved["width"] == 30 and resolved["steps"] == 4 and resolved["n_test"] == 50
    assert resolved["keep"] == 0.9  # the flag wins over the file


def test_toml_config_and_bad_keys(tmp_path, capsys):
    good = tmp_path / "c.toml"
    good.write_text("width = 20\nsteps = 3\n")
    assert main(["run", "teacher-student", "--config", str(good), "--out", str(tmp_path / "a"),
                 "--no-progress"]) == 0
    bad = tmp_path / "bad.yaml"
    bad.write_text("widht: 20\n")
    assert main(["run", "teacher-student", "--config", str(bad), "--out", str(tmp_path / "b")]) == 2
    assert "unknown setting(s) widht" in capsys.readouterr().err
    typed = tmp_path / "typed.yaml"
    typed.write_text("width: many\n")
    assert main(["run", "teacher-student", "--config", str(typed), "--out", str(tmp_path / "c")]) == 2
    assert "setting 'width' must be an integer, got 'many'" in capsys.readouterr().err
    assert main(["run", "teacher-student", "--config", str(tmp_path / "missing.yaml")]) == 2


def test_existing_run_folder_needs_force(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["run", "teacher-student", *SMALL, "--out", str(out)]) == 0
    before = (out / "metrics.csv").read_text()
    assert main(["run", "teacher-student", *SMALL, "--seed", "5", "--out", str(out)]) == 2
    assert "already exists" in capsys.readouterr().err
    assert (out / "metrics.csv").read_text() == before
    assert main(["run", "teacher-student", *SMALL, "--seed", "5", "--out", str(out), "--force"]) == 0
    assert (out / "metrics.csv").read_text() != before


def test_cuda_refused_cleanly_without_gpu(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    p = run_cli("run", "teacher-student", *SMALL, "--device", "cuda", "--out", str(tmp_path / "r"))
    assert p.returncode == 2 and "CUDA is not available" in p.stderr


def test_fused_backend_needs_a_gpu_and_says_so(tmp_path):
    import os

    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}  # the tests' interpreter flag off
    for backend, why in (("fused", "backend 'fused' runs on CUDA devices"), ("triton", "unknown backend 'triton'")):
        p = subprocess.run([sys.executable, "-m", "dropdyn.cli", "run", "teacher-student", *SMALL, "--backend",
                            backend, "--out", str(tmp_path / backend)], capture_output=True, text=True, env=env)
        assert p.returncode == 2 and why in p.stderr and len(p.stderr.strip().splitlines()) == 1, p.stderr


def test_graph_needs_a_gpu_and_says_so(tmp_path, capsys):
    assert main(["run", "teacher-student", *SMALL, "--graph", "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip()
    assert "graph=True captures CUDA graphs: it needs a CUDA device, not 'cpu'" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "r").exists()


def test_progress_bar_goes_to_a_log_with_progress_only(tmp_path, dropdyn_cli):
    # stderr is a pipe here, as in a batch job: no bar by default, the bar with --progress
    args = ["run", "teacher-student", "--width", "40", "--steps", "6"]
    quiet = dropdyn_cli(*args, "--out", str(tmp_path / "a"))
    shown = dropdyn_cli(*args, "--progress", "--out", str(tmp_path / "b"))
    assert quiet.returncode == shown.returncode == 0
    assert "step/s" not in quiet.stderr and "step/s" in shown.stderr
    both = dropdyn_cli(*args, "--progress", "--no-progress", "--out", str(tmp_path / "c"))
    assert both.returncode == 2 and "not allowed with argument" in both.stderr
