"""Checks of input arrays and parameters shared by the readers, the simulator and the scoring.

In the manner of scikit-learn's ``check_array``: each helper takes a value and the name to blame
(a file, a key, a parameter), returns the value in the form the caller works with, and raises
one :class:`~kilomatch.errors.KilomatchError` naming it otherwise. Readers that collect every
problem before raising use :func:`collect`.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field

import numpy as np

from .errors import KilomatchError

__all__ = ["as_vector", "as_integers", "nonfinite_rows", "check_finite", "name_items",
           "collect", "Spec", "value_problem", "check_table"]


def name_items(items, limit: int = 10) -> str:
    """'3, 7, 12' or '3, 7, ... (25 in all)': units, sessions or channels named in a message."""
    items = list(items)
    shown = ", ".join(str(u) for u in items[:limit])
    return shown + (f" ... ({len(items)} in all)" if len(items) > limit else "")


def as_vector(a, name: str, what: str = "N") -> np.ndarray:
    """(N,), (N, 1) or (1, N) -> (N,); MATLAB and Kilosort save vectors as columns.

    Raises naming ``name`` for any other shape; ``what`` names the length in the message."""
    arr = np.asarray(a)
    if arr.ndim == 2 and (1 in arr.shape or arr.size == 0):  # MATLAB's empty is 0 x 0
        arr = arr.reshape(-1)
    if arr.ndim != 1:
        raise KilomatchError(f"{name}: expected shape ({what},) or ({what}, 1), got "
                             f"{np.shape(a)}")
    return arr


def as_integers(a, name: str, what: str = "entries") -> np.ndarray:
    """Integer labels, (N,) or (N, 1), of an integer dtype or whole finite floats -> (N,) int64.

    Raises naming ``name`` and the first offending ``what`` (e.g. "units")."""
    arr = as_vector(a, name)
    if arr.dtype.kind == "f":
        bad = ~np.isfinite(arr)
        bad[~bad] = arr[~bad] != np.round(arr[~bad])
        if bad.any():
            raise KilomatchError(f"{name}: must hold whole numbers; {what} "
                                 f"{name_items(np.flatnonzero(bad))} are not")
    elif arr.dtype.kind not in "iub":
        raise KilomatchError(f"{name}: dtype {arr.dtype} is not integer")
    elif arr.dtype.kind == "u" and arr.size and arr.max() > np.iinfo(np.int64).max:
        # cast to int64 it would be named as a negative number
        beyond = np.flatnonzero(arr > np.iinfo(np.int64).max)
        raise KilomatchError(f"{name}: {what} {name_items(beyond)} hold numbers beyond 2^63 "
                             f"({arr.max()})")
    return arr.astype(np.int64)


def nonfinite_rows(a) -> np.ndarray:
    """Indices of the rows (first axis) of ``a`` that hold NaN or Inf."""
    arr = np.asarray(a)
    if arr.ndim == 0:
        return np.zeros(0, np.int64) if np.isfinite(arr) else np.zeros(1, np.int64)
    # rows x the rest, written out: reshape(-1) cannot infer it when there are no rows
    rows = arr.reshape(arr.shape[0], int(np.prod(arr.shape[1:])))
    return np.flatnonzero(~np.isfinite(rows).all(axis=1))


def check_finite(a, name: str, rows: str = "in rows") -> np.ndarray:
    """``a`` unchanged when it holds no NaN or Inf; else raise naming the rows at fault, which
    ``rows`` introduces (e.g. "at channels", "in the PETH of units")."""
    bad = nonfinite_rows(a)
    if bad.size:
        raise KilomatchError(f"{name}: NaN or Inf {rows} {name_items(bad)}")
    return a


def collect(problems: list, check, *args, **kwargs):
    """``check(*args, **kwargs)``, or None with its problems appended to ``problems`` when it
    raises KilomatchError: for readers that report every problem of a folder at once."""
    try:
        return check(*args, **kwargs)
    except KilomatchError as err:
        problems.extend(err.problems)
        return None


# --------------------------------------------------------------------------------------------
# Declared parameters (one Spec per parameter, as kilomatch.parameters does for the settings)
# --------------------------------------------------------------------------------------------

_KIND_TEXT = {"bool": "true or false", "int": "an integer", "float": "a finite number",
              "str": "a string"}


@dataclass(frozen=True)
class Spec:
    """One parameter: its name, kind ("bool", "int", "float", "str"), meaning (with its unit)
    and allowed range. ``min``/``max`` are inclusive unless ``*_exclusive``; ``none_ok`` allows
    None ("not set")."""

    name: str
    kind: str
    help: str
    min: float | None = None
    min_exclusive: bool = False
    max: float | None = None
    max_exclusive: bool = False
    choices: tuple = field(default_factory=tuple)
    none_ok: bool = False

    def allowed(self) -> str:
        """What values are allowed, in words."""
        if self.choices:
            text = "one of " + ", ".join(repr(c) for c in self.choices)
        else:
            text = _KIND_TEXT[self.kind]
            bounds = []
            if self.min is not None:
                bounds.append(f"{'>' if self.min_exclusive else '>='} {self.min:g}")
            if self.max is not None:
                bounds.append(f"{'<' if self.max_exclusive else '<='} {self.max:g}")
            if bounds:
                text += " " + " and ".join(bounds)
        return text + (", or None" if self.none_ok else "")


def _is_kind(value, kind: str) -> bool:
    if kind == "bool":
        return isinstance(value, (bool, np.bool_))
    if kind == "str":
        return isinstance(value, str)
    if isinstance(value, (bool, np.bool_)):
        return False
    if kind == "int":
        return isinstance(value, numbers.Integral)
    return isinstance(value, numbers.Real) and math.isfinite(value)


def value_problem(spec: Spec, value) -> str | None:
    """None when ``value`` is allowed by ``spec``, else the message naming the parameter."""
    if value is None and spec.none_ok:
        return None
    ok = _is_kind(value, spec.kind)
    if ok and spec.choices:
        ok = value in spec.choices
    if ok and spec.min is not None:
        ok = value > spec.min if spec.min_exclusive else value >= spec.min
    if ok and spec.max is not None:
        ok = value < spec.max if spec.max_exclusive else value <= spec.max
    return None if ok else f"{spec.name} must be {spec.allowed()}, got {value!r}"


def check_table(values: dict, table, header: str) -> None:
    """Check ``values`` (name -> value) against every :class:`Spec` of ``table``; raise one
    KilomatchError listing every problem under ``header``."""
    problems = [p for p in (value_problem(s, values[s.name]) for s in table) if p]
    if problems:
        raise KilomatchError.from_problems(problems, header)
