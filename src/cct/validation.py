"""Rules for configuration fields (recipes, model configs, runtimes): each field's check with the words of what it
expects, so that a bad value is a one-line error naming the field when the config is made, not a failure
somewhere later."""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Callable

from .errors import CCTError


@dataclass(frozen=True)
class Rule:
    """check(value) -> whether it is valid; `expects`: what a valid value is, in words."""

    check: Callable[[Any], bool]
    expects: str

    def __call__(self, value: Any) -> bool:
        return self.check(value)


def integer(low: int, high: int | None = None) -> Rule:
    return Rule(lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= low and (high is None or v <= high),
                f"an integer of at least {low}" if high is None else f"an integer from {low} to {high}")


def number(low: float, high: float = float("inf"), high_included: bool = False) -> Rule:
    bounds = f"of at least {low:g}" if high == float("inf") else f"in [{low:g}, {high:g}{']' if high_included else ')'}"
    return Rule(lambda v: (isinstance(v, (int, float)) and not isinstance(v, bool)
                           and low <= v and (v <= high if high_included else v < high)), f"a number {bounds}")


def optional(rule: Rule) -> Rule:
    return Rule(lambda v: v is None or rule(v), f"null or {rule.expects}")


def one_of(*choices: str) -> Rule:
    quoted = [f'"{choice}"' for choice in choices]
    return Rule(lambda v: v in choices, f"{', '.join(quoted[:-1])} or {quoted[-1]}")


def tuple_of(*rules: Rule, expects: str | None = None) -> Rule:
    """A tuple with one item for each rule; `expects` None: the items' words, listed."""
    return Rule(lambda v: isinstance(v, tuple) and len(v) == len(rules) and all(ok(x) for ok, x in zip(rules, v)),
                expects or f"[{', '.join(rule.expects for rule in rules)}]")


def all_of(rule: Rule, expects: str) -> Rule:
    """A tuple of any length whose every item `rule` takes."""
    return Rule(lambda v: isinstance(v, tuple) and all(map(rule, v)), expects)


def instance_of(kind: type, expects: str) -> Rule:
    return Rule(lambda v: isinstance(v, kind), expects)


FRACTION, NON_NEGATIVE = number(0.0, 1.0), number(0.0)
PROBABILITY = Rule(number(0.0, 1.0, True).check, "a probability in [0, 1]")
POSITIVE = Rule(lambda v: NON_NEGATIVE(v) and v > 0, "a number above 0")
BOOLEAN = instance_of(bool, "true or false")


def check_fields(config: Any, rules: dict[str, Rule], kind: str) -> None:
    """Turn the lists of `config`'s fields (JSON's or a caller's, nested too) into the tuples the rules expect,
    then raise a CCTError for the first field its rule refuses: "{kind} field NAME: expected ..., got VALUE"
    (tuples shown as the JSON lists they come from)."""
    for name, rule in rules.items():
        value = _tuples(getattr(config, name))
        object.__setattr__(config, name, value)  # frozen dataclasses too
        if not rule(value):
            raise CCTError(f"{kind} field {name}: expected {rule.expects}, got {_lists(value)!r}")


def _lists(value: Any) -> Any:
    return [_lists(v) for v in value] if isinstance(value, tuple) else value


def _tuples(value: Any) -> Any:
    return tuple(_tuples(v) for v in value) if isinstance(value, list) else value


def did_you_mean(unknown: Iterable[str], known: Iterable[str], n: int = 3) -> str:
    """"; did you mean X, Y?" with the known names spelled closest to the unknown ones (up to `n` for each), or ""
    for none."""
    known = list(known)
    close = dict.fromkeys(match for name in unknown for match in difflib.get_close_matches(name, known, n=n))
    return f"; did you mean {', '.join(close)}?" if close else ""
