"""Declarative settings: each field's constraint holds on every path a config is made
(Python, YAML, the command line, a sweep), survives a subclass that changes the default,
and list settings are tuples whatever form they were given in."""

import dataclasses
import typing

import pytest

from dropdyn._checks import InputError
from dropdyn.cli import build_parser
from dropdyn.experiments import convergence, phase_sweep, teacher_student
from dropdyn.lab.experiment import get, registry
from dropdyn.lab.settings import Check, Settings, _coerce, as_text, constraint, setting
from dropdyn.lab.store import run_key

FREE = {"path", "data_dir"}  # file names: any text


def _fields():
    for name, exp in registry().items():
        hints = typing.get_type_hints(exp.Config)
        for f in dataclasses.fields(exp.Config):
            yield name, exp.Config, f, hints[f.name]


@pytest.mark.parametrize("name, cls, f, typ", list(_fields()), ids=lambda v: getattr(v, "name", None))
def test_every_setting_declares_a_constraint_its_default_meets(name, cls, f, typ):
    """Every setting but a bool or a file name says what it allows; the defaults meet it; a
    list's default survives its command-line text."""
    if typ is bool or f.name in FREE:
        return
    check = constraint(cls, f.name)
    assert isinstance(check, Check), f"{name}: setting {f.name!r} declares no constraint"
    if f.default is not None:
        check(f.name, f.default)
        if isinstance(f.default, tuple):
            assert _coerce(f.name, as_text(f.default), typ) == f.default


def test_a_redefined_default_keeps_the_base_constraint():
    """convergence's Family redefines teacher-student's ``dim`` and ``n_train`` with other
    defaults and no constraint: the base's still holds."""
    assert convergence.Config.__dataclass_fields__["dim"].metadata.get("check") is None
    assert constraint(convergence.Config, "dim") is constraint(teacher_student.Task, "dim")
    assert convergence.Config().dim == 5
    with pytest.raises(InputError, match="dim must be an integer >= 1, got 0"):
        convergence.Config(dim=0)
    with pytest.raises(InputError, match="n_train must be an integer >= 1, got -3"):
        get("convergence").resolve({"n_train": -3})


def test_a_settings_object_is_checked_when_it_is_made():
    with pytest.raises(InputError, match="keep must be in \\(0, 1\\], got 1.5"):
        teacher_student.Config(keep=1.5)
    with pytest.raises(InputError, match="setting 'width' must be an integer, got 2.5"):
        teacher_student.Config(width=2.5)
    cfg = teacher_student.Config(width=300.0, lr=1)  # integral float → int, int → float
    assert (type(cfg.width), type(cfg.lr)) == (int, float)
    with pytest.raises(InputError, match="lr must be a finite positive number, got 0.0"):
        dataclasses.replace(cfg, lr=0)


@pytest.mark.parametrize("given", ["0,1", [0, 1], (0.0, 1.0)])
def test_a_list_setting_is_one_tuple_whatever_form_it_takes(given):
    """Comma text (CLI), a YAML/Python list, a tuple, integers for floats: one value, one run key."""
    reference = get("phase-sweep").resolve({"a_values": (0.0, 1.0), "widths": [40, 80]})
    cfg = get("phase-sweep").resolve({"a_values": given, "widths": "80, 40"})
    assert cfg.a_values == (0.0, 1.0) and cfg.widths == (40, 80)
    assert run_key("phase-sweep", dataclasses.asdict(cfg)) == run_key("phase-sweep", dataclasses.asdict(reference))


@pytest.mark.parametrize("given, match", [
    ("", "setting 'lrs' must not be empty"),
    ("0.1,x", "setting 'lrs' must be a comma-separated list of numbers, got 'x'"),
    (5, "setting 'lrs' must be a list, got 5"),
    ([0.1, True], "setting 'lrs' must be a number, got True"),
    ("0.1,-0.2", "lrs must be a finite positive number, got -0.2"),
])
def test_a_bad_list_names_the_setting_and_the_item(given, match):
    with pytest.raises(InputError, match=match):
        get("sme-order").resolve({"lrs": given})


def test_pairs_take_text_and_nested_lists():
    exp = get("sme-trajectories")
    assert exp.resolve({"settings": "0.1:0.9, 1:0.3"}).settings == ((0.1, 0.9), (1.0, 0.3))
    assert exp.resolve({"settings": [[0.1, 0.9], [1, 0.3]]}).settings == ((0.1, 0.9), (1.0, 0.3))
    assert as_text(((0.1, 0.9), (1.0, 0.3))) == "0.1:0.9,1:0.3"
    for bad, match in (("0.1:0.9:2", "must be 2 values separated by ':'"), ([[0.1]], "must have 2 items"),
                       ("0.1:2", "settings' keep must be in \\(0, 1\\], got 2.0")):
        with pytest.raises(InputError, match=match):
            exp.resolve({"settings": bad})


def test_a_users_own_check_and_its_help():
    even = Check("an even integer", lambda name, v: None if v % 2 == 0 else
                 (_ for _ in ()).throw(InputError(f"{name} must be even, got {v}")))

    @dataclasses.dataclass
    class Mine(Settings):
        size: int = setting(4, "size", even)

    assert Mine(size=6.0).size == 6
    with pytest.raises(InputError, match="size must be even, got 3"):
        Mine(size=3)


def test_the_command_line_help_shows_each_constraint_and_list_default():
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command").choices["run"]
    text = " ".join(next(a for a in sub._actions if a.dest == "experiment").choices["phase-sweep"]
                    .format_help().split())
    assert "exponents a (τ = c_lr·n^−a) (each in [0, ∞); default 0,0.25,0.5,0.75,1,1.25)" in text
    assert "replicas per width (an integer >= 1; default 4)" in text
    assert phase_sweep.Config().a_values == (0.0, 0.25, 0.5, 0.75, 1.0, 1.25)


def test_a_stored_config_reads_back_typed():
    """A run's config.json holds lists (or the comma text of list settings): the theory rows
    read them as the settings' tuples; unknown keys and values that do not coerce stay."""
    from dropdyn.experiments import srivastava
    from dropdyn.lab.settings import typed

    stored = {"datasets": "mnist,digits", "hidden": 3.0, "lr": "x", "gone": 1}
    assert typed(srivastava.Config, stored) == {"datasets": ("mnist", "digits"), "hidden": 3, "lr": "x", "gone": 1}
    assert typed(srivastava.Config, {"datasets": ["digits"]})["datasets"] == ("digits",)
