"""Experiment settings: each experiment's ``Config`` is a dataclass whose fields are made
with :func:`setting` (default, help text for the CLI, and a declarative constraint such as
``check=at_least(1)``); it is filled from its defaults, then a YAML/TOML file, then
overrides (each later source wins). Unknown keys, values of the wrong type and values
outside their constraint are refused with a message naming them. List settings are typed
as tuples (``tuple[int, ...]``, :data:`Pairs`): they take lists, or their comma-separated
text (``"500,1000"``, ``"0.05:0.9,1:0.3"``) on the command line. A subclass may redefine a
field to change its default; the constraint declared on the base class still holds.
:class:`Runtime` holds the settings every simulating experiment shares."""

from __future__ import annotations

import dataclasses
import functools
import numbers
import sys
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .._checks import (
    InputError,
    check_choice,
    check_device,
    check_int,
    check_interval,
    check_keep,
    check_positive,
    check_seed,
    shown,
)

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


def read_config_file(path) -> dict:
    """A mapping from a ``.yaml``/``.yml`` or ``.toml`` file."""
    path = Path(path)
    try:
        path.stat()
    except PermissionError:
        raise InputError(f"config file {str(path)!r} cannot be read: permission denied") from None
    except OSError:
        raise InputError(f"config file {str(path)!r} does not exist") from None
    if not path.is_file():
        raise InputError(f"config file {str(path)!r} is not a file")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise InputError(f"config file {path}: not UTF-8 text (byte {e.start})") from None
    if path.suffix in (".yaml", ".yml"):
        import yaml

        try:
            data = yaml.load(text, Loader=_unique_key_loader())
        except yaml.YAMLError as e:
            raise InputError(f"config file {path}: invalid YAML ({str(e).splitlines()[0]})") from None
        except RecursionError:  # both parsers recurse on nesting
            raise InputError(f"config file {path}: nested too deeply") from None
    elif path.suffix == ".toml":
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as e:
            raise InputError(f"config file {path}: invalid TOML ({e})") from None
        except RecursionError:
            raise InputError(f"config file {path}: nested too deeply") from None
    else:
        raise InputError(f"config file {path}: use a .yaml, .yml or .toml file")
    data = data or {}
    if not isinstance(data, dict):
        raise InputError(f"config file {path}: expected a mapping of settings, got {type(data).__name__}")
    return data


def _unique_key_loader():
    import yaml

    class Loader(yaml.SafeLoader):
        """YAML's safe loader, refusing a key given twice in one mapping (PyYAML keeps the last)
        and a key that is not a name (a number, a list); merge keys (``<<: *base``) work."""

        def construct_mapping(self, node, deep=False):
            seen = set()
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":  # merged by SafeLoader; its keys may be overridden
                    continue
                key = self.construct_object(key_node, deep=True)  # (a list key shows its items)
                if not isinstance(key, str):
                    raise yaml.constructor.ConstructorError(None, None, f"a key must be a name, got {shown(key)}",
                                                            key_node.start_mark)
                if key in seen:
                    raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}",
                                                            key_node.start_mark)
                seen.add(key)
            return super().construct_mapping(node, deep)

    return Loader


def _coerce(name: str, value, typ):
    origin = typing.get_origin(typ)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        args = [t for t in typing.get_args(typ) if t is not type(None)]
        if value is None:
            return None
        return _coerce(name, value, args[0])
    if typ is bool:
        if isinstance(value, bool):
            return value
        raise InputError(f"setting {name!r} must be true or false, got {shown(value)}")
    if typ is int:
        if isinstance(value, bool) or not (isinstance(value, numbers.Integral)
                                           or (isinstance(value, float) and value.is_integer())):
            raise InputError(f"setting {name!r} must be an integer, got {shown(value)}")
        if not -(2**63) <= int(value) < 2**63:
            raise InputError(f"setting {name!r} must fit in 64 bits, got {shown(value)}")
        return int(value)
    if typ is float:
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise InputError(f"setting {name!r} must be a number, got {shown(value)}")
        return float(value)
    if origin is tuple:
        return _coerce_tuple(name, value, typing.get_args(typ))
    if typ is str:
        if not isinstance(value, str):
            raise InputError(f"setting {name!r} must be a string, got {shown(value)}")
        return value
    return value


Pairs = tuple[tuple[float, float], ...]  # (learning rate, keep) pairs: [[0.05, 0.9], [1, 0.3]] or "0.05:0.9,1:0.3"


def _coerce_tuple(name: str, value, args: tuple, sep: str = ","):
    """A list setting: a list/tuple, or its text (items split at ``sep``: commas, and the
    parts of a pair inside a list at colons). ``args``: ``(T, ...)`` for any non-empty
    length, ``(T1, T2)`` for a fixed one."""
    variadic = len(args) == 2 and args[1] is Ellipsis
    text = isinstance(value, str)
    if text:
        given, value = value, [v.strip() for v in value.split(sep)]
        value = [v for v in value if v] if variadic else value
    if not isinstance(value, (list, tuple)):
        raise InputError(f"setting {name!r} must be a list, got {shown(value)}")
    types = [args[0]] * len(value) if variadic else args
    if variadic and not value:
        raise InputError(f"setting {name!r} must not be empty")
    if len(value) != len(types):
        raise InputError(f"setting {name!r} must be {len(types)} values separated by {sep!r}, got {shown(given)}"
                         if text else f"setting {name!r} must have {len(types)} items, got {shown(value)}")
    return tuple(_coerce_tuple(name, v, typing.get_args(t), ":") if typing.get_origin(t) is tuple else
                 _coerce(name, _item(name, v, t) if text else v, t) for v, t in zip(value, types, strict=True))


def _item(name: str, text: str, typ):
    """One item of a list setting's text, parsed as ``typ``."""
    try:
        return integer(text) if typ is int else float(text) if typ is float else text
    except ValueError:
        kind = "integers" if typ is int else "numbers"
        raise InputError(f"setting {name!r} must be a comma-separated list of {kind}, got {shown(text)}") from None


def integer(text: str) -> int:
    """A command-line integer: ``1000``, or an integral number written as a float (``1e6``)."""
    try:
        return int(text)
    except ValueError:
        value = float(text)  # a ValueError here is argparse's "invalid value"
        if not value.is_integer():
            raise ValueError(text) from None
        return int(value)


PARSERS = {int: integer, float: float, str: str}  # a setting's type → its command-line parser


def as_text(value) -> str:
    """A setting's value as it is written on the command line (and in tables): a list's
    items joined by commas, a pair's parts by colons (``((0.05, 0.9), (1, 0.3))`` →
    ``0.05:0.9,1:0.3``)."""
    if isinstance(value, (tuple, list)):
        return ",".join(":".join(f"{v:g}" for v in item) if isinstance(item, (tuple, list)) else
                        f"{item:g}" if isinstance(item, float) else str(item) for item in value)
    return str(value)


def build_config(cls, file=None, overrides: dict | None = None):
    """An instance of settings class ``cls``: defaults ← file ← overrides (``None`` = unset)."""
    fields = {f.name for f in dataclasses.fields(cls)}
    values: dict = {}
    sources = [read_config_file(file) if file else {}, {k: v for k, v in (overrides or {}).items() if v is not None}]
    for src in sources:
        unknown = sorted(set(src) - fields)
        if unknown:
            more = f" and {len(unknown) - 10} more" if len(unknown) > 10 else ""  # (one line, however many)
            raise InputError(f"unknown setting(s) {', '.join(k[:60] for k in unknown[:10])}{more} for "
                             f"{cls.__name__}; known: {', '.join(sorted(fields))}")
        values.update(src)
    return cls(**values)


@dataclass
class Settings:
    """The base of every experiment's settings: on construction each field is coerced to its
    type (an integral float to ``int``, a list or its comma text to a tuple, ``0`` to ``0.0``)
    and checked against its constraint, so a settings object is valid once it exists."""

    def __post_init__(self) -> None:
        hints = _hints(type(self))
        for f in dataclasses.fields(self):
            object.__setattr__(self, f.name, _coerce(f.name, getattr(self, f.name), hints[f.name]))
        for f in dataclasses.fields(self):
            check, value = constraint(type(self), f.name), getattr(self, f.name)
            if check is not None and value is not None:
                check(f.name, value)


@functools.cache
def _hints(cls) -> dict:
    return typing.get_type_hints(cls)


def typed(cls, config: dict) -> dict:
    """A stored config (a run's ``config.json``) with each setting of ``cls`` it holds coerced
    to its type: JSON's lists back to tuples, and list settings stored as comma text to
    theirs. A value that does not coerce, or a key ``cls`` lacks, is kept as stored."""
    hints, out = _hints(cls), dict(config)
    for k, v in config.items():
        if k in hints:
            try:
                out[k] = _coerce(k, v, hints[k])
            except InputError:
                pass
    return out


@dataclass(frozen=True)
class Check:
    """A declarative constraint on a setting: ``test(name, value)`` raises :class:`InputError`
    naming the setting when ``value`` breaks it; ``text`` says what it allows (in ``--help``)."""

    text: str
    test: Callable[[str, Any], Any]

    def __call__(self, name: str, value) -> None:
        self.test(name, value)


def at_least(minimum: int) -> Check:
    """An integer ≥ ``minimum``."""
    return Check(f"an integer >= {minimum}", lambda name, v: check_int(name, v, minimum))


def positive() -> Check:
    """A finite number > 0."""
    return Check("> 0", check_positive)


def nonnegative() -> Check:
    """A finite number ≥ 0."""
    return interval("[0, ∞)")


def probability() -> Check:
    """A keep rate q ∈ (0, 1]."""
    return Check("in (0, 1]", lambda name, v: check_keep(v, name))


def interval(text: str) -> Check:
    """A finite number in the interval ``text``, such as ``"[0, 1)"`` (its brackets say which
    ends belong to it)."""
    return Check(f"in {text}", lambda name, v: check_interval(name, v, text))


def one_of(*choices: str) -> Check:
    """One of ``choices``."""
    return Check(f"one of {', '.join(choices)}", lambda name, v: check_choice(name, v, choices))


def each(check: Check) -> Check:
    """Every item of a list setting meets ``check``."""
    def test(name, values):
        for v in values:
            check(name, v)

    return Check(f"each {check.text}", test)


def constraint(cls, name: str) -> Check | None:
    """The constraint on field ``name`` of dataclass ``cls``: the one declared lowest in its
    method resolution order (a redefinition that only changes the default keeps the base's)."""
    for klass in cls.__mro__:
        f = vars(klass).get("__dataclass_fields__", {}).get(name)
        if f is not None and "check" in f.metadata:
            return f.metadata["check"]
    return None


def setting(default, help: str, check: Check | None = None):  # noqa: A002 - the word argparse uses
    """A config field with its help text (shown by ``dropdyn run NAME --help`` with the
    default) and its constraint ``check`` (met by every value the settings are built with)."""
    return field(default=default, metadata={"help": help, **({"check": check} if check else {})})


MAX_SEED = 2**40  # an experiment's seed; the seeds it derives (seed·1,000,003 + width, …) stay below 2^63


def valid_seed() -> Check:
    """An experiment's seed, in [0, :data:`MAX_SEED`]."""
    def test(name, v):
        if check_seed(v) > MAX_SEED:
            raise InputError(f"seed must be at most 2^40 = {MAX_SEED} (an experiment derives its data, initial and "
                             f"mask seeds from it), got {v}")

    return Check("an integer in [0, 2^40]", test)


def available_device() -> Check:
    """A torch device that exists here (the CPU, or CUDA where available)."""
    return Check("cpu or cuda", lambda name, v: check_device(v))


@dataclass
class Runtime(Settings):
    """Seed, device and dtype: the settings every simulating experiment shares."""

    seed: int = setting(0, "seed of data, initialisation and masks", valid_seed())
    device: str = setting("cpu", "cpu or cuda", available_device())
    dtype: str = setting("float64", "float64 or float32", one_of("float64", "float32"))
