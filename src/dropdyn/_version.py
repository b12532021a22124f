"""The version of dropdyn (one place: the package, the store's run keys and the report read it)."""

__version__ = "0.1.0"
