"""Options given as KEY=VALUE (``--method-option``, ``--cap-option``): one parser, one coercer, declared
rules.

``parse_key_values`` splits the command line's pairs and keeps each value as text; ``coerce`` turns a value
into the type its option declares (``OptionRule.kind``, or a CAP field's default), the same way for every
option: YAML reads the text (``0.1``, ``400``, ``true``), so a number keeps how it was written (an int stays
an int, which keeps cell digests stable) and a number YAML reads as text (``1e-3``) is read as a float,
except for ``steps`` options, where a fraction is written with a decimal point (0.1) and a step count as a
whole number (100); ``bool`` also takes yes/no/on/off/1/0; ``optional_int`` takes
none; ``list`` takes ``a,b`` or ``a+b``. A value of the wrong type is returned as it is, for the rule's check
to name what the option must be.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import yaml

from capbench.errors import CapbenchError

TRUE = {"1", "true", "yes", "on"}
FALSE = {"0", "false", "no", "off"}
KINDS = ("bool", "int", "float", "steps", "choice", "str", "list", "optional_int")


def parse_key_values(pairs: list[str] | None, flag: str) -> dict[str, str]:
    """``["KEY=VALUE", ...]`` from the command line -> {KEY: VALUE text}; a pair without ``=`` is refused."""
    values: dict[str, str] = {}
    for pair in pairs or []:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise CapbenchError(f"{flag} {pair!r}: expected KEY=VALUE, e.g. {flag} scope=global")
        values[key.strip()] = raw
    return values


def coerce(value: Any, kind: str) -> Any:
    """A KEY=VALUE value (text, or already a Python value from YAML or the API) as an option of ``kind``."""
    if isinstance(value, str) and kind in ("choice", "str"):  # text as typed: YAML 1.1 reads 2:4 as 124
        return value.strip() or None
    if isinstance(value, str):
        value = yaml.safe_load(value) if value.strip() else None
    if kind == "bool":
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        return True if text in TRUE else False if text in FALSE else value
    if kind == "optional_int" and (value is None or str(value).strip().lower() == "none"):
        return None
    if kind == "list":
        if value is None:
            return ()
        if isinstance(value, str):
            return tuple(m for m in value.replace("+", ",").split(",") if m.strip())
        return tuple(value) if isinstance(value, list | tuple) else (value,)
    if kind in ("choice", "str") and value is not None and not isinstance(value, bool):
        return str(value)
    if kind in ("float", "int", "optional_int") and isinstance(value, str):
        try:  # a number YAML 1.1 reads as text (1e-3); "steps" keeps YAML's reading: 0.1 or 100
            return float(value) if math.isfinite(float(value)) else value
        except ValueError:
            return value
    return value


def shown(value: Any) -> str:
    """A value as it is written after KEY= on the command line."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return ""
    if isinstance(value, list | tuple):
        return ",".join(map(str, value))
    return str(value)


def yaml_text_hint(value: Any, kind: str) -> str:
    """'; YAML reads 1e-1 as text: ...' for a number written in a form YAML does not read as a number."""
    if isinstance(value, str) and kind not in ("choice", "bool", "str", "list"):
        try:
            number = float(value)
        except ValueError:
            return ""
        if math.isfinite(number):
            return f"; YAML reads {value} as text: write it with a decimal point, e.g. {number!r}"
    return ""


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


@dataclass(frozen=True)
class OptionRule:
    """What values an option takes. ``kind``: bool, int, float, steps (a fraction of training below 1
    or a whole number of steps) or choice; ``low``/``high`` bound numbers (``open_low``/``open_high``: the
    bound itself is excluded)."""

    kind: str
    doc: str
    low: float | None = None
    high: float | None = None
    open_low: bool = False
    open_high: bool = False
    choices: tuple[str, ...] = ()

    def describe(self) -> str:
        """What the value must be, as the end of 'KEY must be ...'."""
        if self.kind == "bool":
            return "true or false"
        if self.kind == "choice":
            return f"one of {', '.join(self.choices)}"
        if self.kind == "steps":
            return "a fraction of training in [0, 1) or a whole number of steps, e.g. 0.1"
        noun = "a whole number" if self.kind in ("int", "optional_int") else "a finite number"
        if self.low is not None and self.high is not None:
            left, right = "(" if self.open_low else "[", ")" if self.open_high else "]"
            return f"{noun} in {left}{_number(self.low)}, {_number(self.high)}{right}"
        if self.low is not None:
            return f"{noun} {'>' if self.open_low else '>='} {_number(self.low)}"
        return noun

    def accepts(self, value) -> bool:
        if self.kind == "optional_int" and value is None:
            return True
        if self.kind == "bool":
            return isinstance(value, bool)
        if self.kind == "choice":
            return isinstance(value, str) and value in self.choices
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            return False
        if self.kind == "steps":
            return value >= 0 and (value < 1 or float(value).is_integer())
        if self.kind in ("int", "optional_int") and not float(value).is_integer():
            return False
        if self.low is not None and (value <= self.low if self.open_low else value < self.low):
            return False
        if self.high is not None and (value >= self.high if self.open_high else value > self.high):
            return False
        return True
