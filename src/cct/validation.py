"""Rules for configuration fields (recipes, model configs): each field's check and what it expects, so that a
bad value is a one-line error naming the field when the config is made, not a failure somewhere later."""

from __future__ import annotations

from typing import Any, Callable

from .errors import CCTError

Check = Callable[[Any], bool]


def integer(low: int) -> Check:
    return lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= low


def number(low: float, high: float = float("inf"), high_included: bool = False) -> Check:
    return lambda v: (isinstance(v, (int, float)) and not isinstance(v, bool)
                      and low <= v and (v <= high if high_included else v < high))


def positive(v: Any) -> bool:
    return number(0.0)(v) and v > 0


def boolean(v: Any) -> bool:
    return isinstance(v, bool)


def optional(check: Check) -> Check:
    return lambda v: v is None or check(v)


def one_of(*choices: str) -> Check:
    return lambda v: v in choices


def tuple_of(*checks: Check) -> Check:
    return lambda v: isinstance(v, tuple) and len(v) == len(checks) and all(ok(x) for ok, x in zip(checks, v))


FRACTION, PROBABILITY, NON_NEGATIVE = number(0.0, 1.0), number(0.0, 1.0, True), number(0.0)


def check_fields(config: Any, rules: dict[str, tuple[Check, str]], kind: str) -> None:
    """Raise a CCTError for the first field of `config` its rule refuses: "{kind} field NAME: expected ...,
    got VALUE" (tuples shown as the JSON lists they come from)."""
    for name, (check, expected) in rules.items():
        value = getattr(config, name)
        if not check(value):
            raise CCTError(f"{kind} field {name}: expected {expected}, got {_lists(value)!r}")


def _lists(value: Any) -> Any:
    return [_lists(v) for v in value] if isinstance(value, tuple) else value
