"""Run folders appear whole or not at all."""

import json
import os

import numpy as np
import pytest

from dropdyn import InputError
from dropdyn.lab.store import RunFolder, atomic_write_bytes, config_key, load, read_json


def test_run_folder_appears_only_when_complete(tmp_path):
    path = tmp_path / "run"
    with RunFolder(path) as run:
        run.write_json("config.json", {"a": 1})
        run.write_csv("metrics.csv", {"x": np.arange(3), "y": np.ones(3)})
        run.write_npz("arrays.npz", {"z": np.eye(2)})
        assert not path.exists()
    assert json.loads((path / "config.json").read_text()) == {"a": 1}
    assert (path / "metrics.csv").read_text().splitlines() == ["x,y", "0,1.0", "1,1.0", "2,1.0"]
    assert np.array_equal(np.load(path / "arrays.npz")["z"], np.eye(2))
    assert [p.name for p in tmp_path.iterdir()] == ["run"]  # no temporary leftovers


def test_failure_leaves_nothing(tmp_path):
    with pytest.raises(RuntimeError):
        with RunFolder(tmp_path / "run") as run:
            run.write_json("config.json", {})
            raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []


def test_an_unwritable_place_is_named_by_the_run_folder(tmp_path, monkeypatch):
    # the error names the folder asked for, not the hidden partial folder beside it
    def refuse(dir, prefix):
        raise PermissionError(13, "Permission denied", f"{dir}/{prefix}xyz")

    monkeypatch.setattr("tempfile.mkdtemp", refuse)
    with pytest.raises(InputError, match=f"cannot create run folder '{tmp_path / 'run'}': Permission denied$"):
        RunFolder(tmp_path / "run").__enter__()


@pytest.mark.parametrize("error", [OSError(28, "No space left on device"),  # names no file
                                   PermissionError(13, "Permission denied", "PARTIAL/figure.png")])
def test_a_failed_write_is_named_by_the_run_folder_and_leaves_nothing(tmp_path, monkeypatch, error):
    real_fsync = os.fsync

    def fail(fd):
        if error.filename:
            error.filename = error.filename.replace("PARTIAL", str(run.tmp))
        raise error

    with pytest.raises(InputError, match=f"cannot write run folder '{tmp_path / 'run'}': {error.strerror}$"):
        with RunFolder(tmp_path / "run") as run:
            run.write_json("config.json", {})
            monkeypatch.setattr("os.fsync", fail)
            run.write_json("summary.json", {})
    monkeypatch.setattr("os.fsync", real_fsync)
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(FileNotFoundError):  # an input's error keeps its own name
        with RunFolder(tmp_path / "run"):
            open(tmp_path / "no-such-data.csv")
    assert list(tmp_path.iterdir()) == []


def test_existing_folder_is_kept_unless_forced(tmp_path):
    path = tmp_path / "run"
    with RunFolder(path) as run:
        run.write_json("config.json", {"experiment": "x", "config": {}})
        run.write_json("v.json", 1)
    with pytest.raises(ValueError, match="already exists"):
        RunFolder(path)
    with RunFolder(path, force=True) as run:
        run.write_json("config.json", {"experiment": "x", "config": {}})
        run.write_json("v.json", 2)
    assert json.loads((path / "v.json").read_text()) == 2
    assert [p.name for p in tmp_path.iterdir()] == ["run"]
    other = tmp_path / "other"  # not a run folder: --force refuses to delete it
    other.mkdir()
    (other / "v.json").write_text("1")
    with pytest.raises(ValueError, match="replaces only run folders"):
        RunFolder(other, force=True)
    for fresh in (tmp_path / "new", tmp_path / "empty"):  # --force where there is nothing to replace
        if fresh.name == "empty":
            fresh.mkdir()
        with RunFolder(fresh, force=True) as run:
            run.write_json("config.json", {"experiment": "x", "config": {}})
        assert [p.name for p in fresh.iterdir()] == ["config.json"]


@pytest.mark.parametrize("name, pid", [(".run.partial-1234-ab_c", 1234), (".a.partial-b.partial-99-x-y", 99),
                                       (".run.partial-x12-ab", None), ("run", None), (".run.partial-", None)])
def test_a_partial_folder_names_its_owner(name, pid):
    """``.NAME.partial-<pid>-<random>``: the pid after the last ``.partial-`` (a NAME may
    hold one too); any other name has no owner (and is never cleaned)."""
    from dropdyn.lab.store import partial_owner

    assert partial_owner(name) == pid


def test_atomic_write_replaces(tmp_path):
    f = tmp_path / "x.txt"
    atomic_write_bytes(f, b"one")
    atomic_write_bytes(f, b"two")
    assert f.read_bytes() == b"two" and len(list(tmp_path.iterdir())) == 1


def test_written_files_and_folders_are_readable_by_others(tmp_path):
    """mkstemp and mkdtemp make private (0600, 0700) files and folders; a run folder is
    shared results, so its files are 0644 and the folder 0755, whatever the umask."""
    atomic_write_bytes(tmp_path / "x.txt", b"one")
    with RunFolder(tmp_path / "run") as run:
        run.write_json("config.json", {"experiment": "e", "config": {}})
    assert (tmp_path / "x.txt").stat().st_mode & 0o7777 == 0o644
    assert (tmp_path / "run" / "config.json").stat().st_mode & 0o7777 == 0o644
    assert (tmp_path / "run").stat().st_mode & 0o7777 == 0o755


@pytest.mark.parametrize("tables, main", [(["a", "metrics", "z"], "metrics"), (["only"], "only"),
                                          (["a", "b"], None), ([], None)])
def test_the_main_table_is_metrics_or_the_only_one(tmp_path, tables, main):
    with RunFolder(tmp_path / "run") as run:
        run.write_json("config.json", {"experiment": "e", "config": {}})
        for i, name in enumerate(tables):
            run.write_csv(f"{name}.csv", {"x": np.arange(i + 1)})
    got = load(tmp_path / "run")
    assert sorted(got.tables) == sorted(tables)
    if main is None:
        assert got.metrics is None
    else:
        assert got.metrics is got.tables[main]


def test_config_key_is_stable_and_order_free():
    assert config_key({"a": 1, "b": 2}) == config_key({"b": 2, "a": 1}) != config_key({"a": 2, "b": 2})


def test_json_nested_deeper_than_the_parser_recurses_reads_as_unreadable(tmp_path, capsys):
    from dropdyn.cli import main

    deep = "[" * 200_000 + "]" * 200_000
    (tmp_path / "deep.json").write_text(deep)
    assert read_json(tmp_path / "deep.json") is None
    with RunFolder(tmp_path / "run") as run:
        run.write_json("config.json", {"experiment": "teacher-student", "config": {}})
    (tmp_path / "run" / "summary.json").write_text(deep)
    assert load(tmp_path / "run").summary == {}
    assert main(["report", str(tmp_path / "run")]) == 0
    (tmp_path / "run" / "config.json").write_text('{"experiment": "x", "config": ' + deep + "}")
    assert main(["report", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "not a dropdyn run config" in err and err.count("\n") == 1
