"""Experiment settings: each experiment's ``Config`` is a dataclass whose fields are made
with :func:`setting` (default, help text for the CLI); it is filled from its defaults, then
a YAML/TOML file, then overrides (each later source wins). Unknown keys and values of the
wrong type are refused with a message naming them. :class:`Runtime` holds the settings
every simulating experiment shares."""

from __future__ import annotations

import dataclasses
import numbers
import sys
import typing
from dataclasses import dataclass, field
from pathlib import Path

from .._checks import InputError, check_device_dtype, check_seed, shown

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
    if typ is str:
        if isinstance(value, (list, tuple)) and all(isinstance(v, (str, numbers.Real)) and not isinstance(v, bool)
                                                    for v in value):
            return ",".join(str(v) for v in value)  # a list setting given as a list: its comma-separated text
        if not isinstance(value, str):
            raise InputError(f"setting {name!r} must be a string, got {shown(value)}")
        return value
    return value


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


def build_config(cls, file=None, overrides: dict | None = None):
    """An instance of dataclass ``cls``: defaults ← file ← overrides (``None`` = unset)."""
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls)}
    values: dict = {}
    sources = [read_config_file(file) if file else {}, {k: v for k, v in (overrides or {}).items() if v is not None}]
    for src in sources:
        unknown = sorted(set(src) - fields)
        if unknown:
            more = f" and {len(unknown) - 10} more" if len(unknown) > 10 else ""  # (one line, however many)
            raise InputError(f"unknown setting(s) {', '.join(k[:60] for k in unknown[:10])}{more} for "
                             f"{cls.__name__}; known: {', '.join(sorted(fields))}")
        for k, v in src.items():
            values[k] = _coerce(k, v, hints[k])
    return cls(**values)


def setting(default, help: str):  # noqa: A002 - the word argparse uses
    """A config field with its help text (shown by ``dropdyn run NAME --help`` with the default)."""
    return field(default=default, metadata={"help": help})


MAX_SEED = 2**40  # an experiment's seed; the seeds it derives (seed·1,000,003 + width, …) stay below 2^63


@dataclass
class Runtime:
    """Seed, device and dtype: the settings every simulating experiment shares."""

    seed: int = setting(0, "seed of data, initialisation and masks")
    device: str = setting("cpu", "cpu or cuda")
    dtype: str = setting("float64", "float64 or float32")

    def check_runtime(self) -> None:
        if check_seed(self.seed) > MAX_SEED:
            raise InputError(f"seed must be at most 2^40 = {MAX_SEED} (an experiment derives its data, initial and "
                             f"mask seeds from it), got {self.seed}")
        check_device_dtype(self.device, self.dtype)
