"""Load and check settings: a typed, read-only object built from the table in parameters.py.

Settings files are JSON with comments, as the reference port reads them (``hjson``), so a file
written for it loads unchanged: ``//``, ``#`` and ``/* */`` comments, trailing commas,
Windows paths written with doubled backslashes.
"""

from __future__ import annotations

import difflib
import json
import math
from pathlib import Path

import hjson
import numpy as np

from .errors import KilomatchError
from .parameters import BY_NAME, FEATURES, LEGACY, PARAMETERS, default_dict


class Section:
    """Read-only attribute view of one level of the settings, e.g. ``settings.clustering``."""

    def __init__(self, values: dict, prefix: str = ""):
        object.__setattr__(self, "_values", values)
        object.__setattr__(self, "_prefix", prefix)

    def __getattr__(self, key):
        if key.startswith("__"):  # copy/pickle probe special names before __init__ ran
            raise AttributeError(key)
        try:
            value = self._values[key]
        except KeyError:
            raise AttributeError(f"no setting '{self._prefix}{key}'") from None
        if isinstance(value, dict):
            return Section(value, f"{self._prefix}{key}.")
        return value

    def __setattr__(self, key, value):
        raise AttributeError("settings are read-only; use Settings.replace(...)")

    def __getitem__(self, dotted: str):
        node = self
        for part in dotted.split("."):
            node = getattr(node, part)
        return node

    def __reduce__(self):
        return (Section, (self._values, self._prefix))

    def __repr__(self):
        return f"{type(self).__name__}({json.dumps(self._values, default=str)})"


class Settings(Section):
    """Validated settings. Access as ``s.clustering.max_distance`` or ``s["clustering.max_distance"]``.

    ``path_to_data`` and ``output_folder`` are absolute :class:`pathlib.Path` objects.
    ``source`` is the settings file it came from (None for a dict).
    """

    def __init__(self, values: dict, source: Path | None = None, notes=()):
        super().__init__(values)
        object.__setattr__(self, "source", source)
        object.__setattr__(self, "notes", tuple(notes))

    def __reduce__(self):
        return (Settings, (self._values, self.source, self.notes))

    def to_dict(self) -> dict:
        """Plain nested dict (paths as strings), as saved next to the results."""
        out = json.loads(json.dumps(self._values, default=str))
        return out

    def changed(self) -> dict:
        """The settings that differ from their defaults, {dotted name: value} in table order;
        the input and output folders are always listed (as absolute paths)."""
        values = _flatten(self.to_dict())
        return {p.name: values[p.name] for p in PARAMETERS
                if p.kind == "path" or values[p.name] != p.default}

    def replace(self, **changes) -> "Settings":
        """A copy with dotted keys changed, checked again: ``s.replace(**{"n_jobs": 1})``."""
        values = self.to_dict()
        for dotted, value in changes.items():
            _set_dotted(values, dotted.replace("__", "."), value)
        return from_dict(values, base_dir=None)


def _set_dotted(tree: dict, dotted: str, value):
    *parents, leaf = dotted.split(".")
    for part in parents:
        tree = tree.setdefault(part, {})
    tree[leaf] = value


def _flatten(tree: dict, prefix: str = "", twice: list | None = None) -> dict:
    """{dotted name: value} of a nested dict; a name given twice (``"clustering.max_distance"``
    beside ``{"clustering": {"max_distance": ...}}``) is appended to ``twice``."""
    flat = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        # A dict is a section unless the table says this name is a leaf.
        inner = (_flatten(value, name + ".", twice) if isinstance(value, dict)
                 and name not in BY_NAME else {name: value})
        if twice is not None:
            twice += [k for k in inner if k in flat]
        flat.update(inner)
    return flat


def _describe(value) -> str:
    text = json.dumps(value, default=str)
    return text if len(text) <= 60 else text[:57] + "..."


def _check_value(param, value) -> str | None:
    """None when ``value`` is valid for ``param``, else what is wrong."""
    got = f"got {_describe(value)}"
    kind = param.kind
    if kind == "bool":
        ok = isinstance(value, bool)
    elif kind == "int":
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif kind == "float":
        ok = (isinstance(value, (int, float)) and not isinstance(value, bool)
              and math.isfinite(value))
    elif kind in ("str", "path", "optional_path"):
        ok = isinstance(value, str) and (kind != "path" or value.strip() != "")
    elif kind == "features":
        return _check_features(value, got)
    elif kind == "feature_rounds":
        if not isinstance(value, list) or not value:
            return f"expected a non-empty list of feature lists, {got}"
        for k, entry in enumerate(value, 1):
            problem = _check_features(entry, got)
            if problem:
                return f"round {k}: {problem}"
        return None
    else:  # pragma: no cover - the table only uses the kinds above
        raise AssertionError(kind)
    if not ok:
        return f"expected {param.allowed()}, {got}"
    if param.choices and value not in param.choices:
        return f"expected {param.allowed()}, {got}"
    if param.min is not None and (value < param.min or (param.min_exclusive and value == param.min)):
        return f"expected {param.allowed()}, {got}"
    if param.max is not None and value > param.max:
        return f"expected {param.allowed()}, {got}"
    return None


def _check_features(value, got) -> str | None:
    if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
        return f"expected a non-empty list of names from {', '.join(FEATURES)}, {got}"
    unknown = [v for v in value if v not in FEATURES]
    if unknown:
        hints = []
        for name in unknown:
            close = difflib.get_close_matches(name, FEATURES, n=1, cutoff=0.5)
            hints.append(f"'{name}'" + (f" (did you mean '{close[0]}'?)" if close else ""))
        return f"unknown feature {', '.join(hints)}; allowed: {', '.join(FEATURES)}"
    if len(set(value)) != len(value):
        return f"a feature is listed twice, {got}"
    return None


def from_dict(tree: dict, base_dir: Path | str | None = None, source: Path | None = None) -> Settings:
    """Check a nested dict of settings (missing keys take defaults) and return :class:`Settings`.

    Every problem is collected and raised together as one :class:`KilomatchError`.
    """
    if not isinstance(tree, dict):
        raise KilomatchError(f"settings must be a JSON object (a dict), got {_describe(tree)}")
    where = f" in {source}" if source else ""
    problems, notes = [], []
    twice: list = []
    given = _flatten(tree, twice=twice)
    values = default_dict()
    for name in dict.fromkeys(twice):
        problems.append(f"setting '{name}'{where} is given twice (as a dotted key and inside "
                        "its section); give it once")
    for name, value in given.items():
        if name in LEGACY:
            notes.append(f"setting '{name}' is ignored: {LEGACY[name]}")
            continue
        param = BY_NAME.get(name)
        value = _python_scalar(value)
        if param is None:
            close = difflib.get_close_matches(name, list(BY_NAME), n=1, cutoff=0.6)
            hint = f" Did you mean '{close[0]}'?" if close else " See README 'Settings'."
            problems.append(f"unknown setting '{name}'{where}.{hint}")
            continue
        problem = _check_value(param, value)
        if problem:
            problems.append(f"setting '{name}'{where}: {problem}")
            continue
        _set_dotted(values, name, value)
    for window, binwidth in (("autoCorr.window", "autoCorr.binwidth"),
                             ("ISI.window", "ISI.binwidth")):
        w, b = _get(values, window), _get(values, binwidth)
        if not problems and b > w:
            problems.append(f"setting '{binwidth}' ({b}) is larger than '{window}' ({w})")
        elif not problems and w / b > MAX_HISTOGRAM_BINS:
            # each unit holds its histogram: 10^6 bins took 132 GB at 17,000 units
            problems.append(f"settings '{window}' ({w:g}) and '{binwidth}' ({b:g}) give "
                            f"{w / b:.3g} bins per unit; at most {MAX_HISTOGRAM_BINS:,} "
                            "(a wider bin or a shorter window)")
    if problems:
        raise KilomatchError.from_problems(problems, header="Invalid settings")
    base = Path(base_dir) if base_dir is not None else Path.cwd()
    for key in ("path_to_data", "output_folder"):
        values[key] = _resolve(values[key], base)
    given_motion = values["waveformCorrection"]["path_to_motion"]
    if given_motion.strip():
        values["waveformCorrection"]["path_to_motion"] = _resolve(given_motion, base)
    if values["path_to_data"] == values["output_folder"]:
        raise KilomatchError(
            f"setting 'output_folder' equals 'path_to_data' ({values['path_to_data']}){where}: "
            "the input folder is never written to; choose another output_folder")
    return Settings(values, source=source, notes=notes)


# The most bins (window over bin width) an autocorrelogram or ISI histogram may have
MAX_HISTOGRAM_BINS = 10_000


def _get(tree, dotted):
    for part in dotted.split("."):
        tree = tree[part]
    return tree


def _resolve(path_text: str, base: Path) -> Path:
    """Absolute path; relative ones against ``base``. A Windows drive path read on another
    system is kept as written, so the 'not found' message shows it unchanged."""
    if _looks_windows_absolute(path_text) and Path("C:/x").is_absolute() is False:
        return Path(path_text)
    path = Path(path_text).expanduser()
    if not path.is_absolute():
        path = base / path
    return path.resolve()


def _looks_windows_absolute(text: str) -> bool:
    return len(text) > 2 and text[1] == ":" and text[2] in "\\/"


def load(source=None) -> Settings:
    """Settings from a path to a settings file, a dict, a :class:`Settings`, or None (defaults).

    Relative paths in a file resolve against the file's folder; in a dict, against the current
    working directory.
    """
    if source is None:
        return from_dict({})
    if isinstance(source, Settings):
        return source
    if isinstance(source, dict):
        return from_dict(source)
    path = Path(source)
    if not path.is_file():
        raise KilomatchError(f"settings file not found: {path}")
    try:
        tree = hjson.loads(path.read_text(encoding="utf-8-sig"))
    except (hjson.HjsonDecodeError, UnicodeDecodeError) as err:
        raise KilomatchError(f"settings file {path} is not valid JSON: {err}. Windows paths need "
                             "doubled backslashes (C:\\\\data) or forward slashes (C:/data).") from None
    return from_dict(_plain(tree), base_dir=path.resolve().parent, source=path)


def _python_scalar(value):
    """numpy's scalars as Python's: a notebook's np.int64(5), read off an array, is an int."""
    if isinstance(value, np.generic) and value.dtype.kind in "biuf":
        return value.item()
    return value


def _plain(tree):
    """hjson returns OrderedDicts; make plain dicts and lists."""
    if isinstance(tree, dict):
        return {k: _plain(v) for k, v in tree.items()}
    if isinstance(tree, list):
        return [_plain(v) for v in tree]
    return tree


__all__ = ["Settings", "load", "from_dict", "PARAMETERS"]
