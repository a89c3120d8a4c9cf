"""Fault plan for the local Labelbox API: which fault (if any) hits the next request.

Pure: the plan is an immutable list of rules, and ``decide`` returns the effect plus the
plan that remains, so the shell (app.py) only stores the new plan and acts on the effect.
The random draw for fractional rules is passed in, which keeps tests deterministic.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

FaultKind = Literal["latency", "http_error", "rate_limit", "reset", "auth", "import_failed"]
FAULT_KINDS: tuple[FaultKind, ...] = ("latency", "http_error", "rate_limit", "reset", "auth", "import_failed")

# The body Labelbox sends when a caller is rate limited; the SDK keys on the prefix.
RATE_LIMIT_MESSAGE = "You have exceeded the rate limit of requests per minute. Please try again later."


class FaultSpecError(ValueError):
    """An admin fault specification is malformed (names the offending field)."""


@dataclass(frozen=True)
class FaultRule:
    """One injected fault: applies to the next ``remaining`` matching requests, or to a
    ``fraction`` of them (forever, until cleared)."""

    kind: FaultKind
    remaining: int | None = None
    fraction: float | None = None
    operations: frozenset[str] = frozenset()
    latency_ms: int = 0
    status: int = 503
    retry_after: int = 1
    rule_id: int = 0

    def matches(self, names: Iterable[str]) -> bool:
        """No operation filter means every /graphql request matches."""
        if not self.operations:
            return True
        return any(n in self.operations for n in names)

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.rule_id,
            "kind": self.kind,
            "remaining": self.remaining,
            "fraction": self.fraction,
            "operations": sorted(self.operations),
            "latencyMs": self.latency_ms,
            "status": self.status,
            "retryAfter": self.retry_after,
        }


@dataclass(frozen=True)
class FaultEffect:
    """What to do to one request: sleep ``latency_ms`` first, then at most one terminal fault."""

    latency_ms: int = 0
    terminal: FaultRule | None = None
    fired: tuple[int, ...] = field(default_factory=tuple)

    @property
    def is_noop(self) -> bool:
        return self.latency_ms == 0 and self.terminal is None


def parse_rule(spec: Mapping[str, Any], rule_id: int) -> FaultRule:
    """Validate an admin JSON fault spec into a rule; raises FaultSpecError naming the field."""
    kind = spec.get("kind")
    if kind not in FAULT_KINDS:
        raise FaultSpecError(f"kind: must be one of {', '.join(FAULT_KINDS)}, got {kind!r}")
    count = spec.get("count")
    fraction = spec.get("fraction")
    if (count is None) == (fraction is None):
        raise FaultSpecError("count/fraction: give exactly one of count (next N requests) or fraction")
    if count is not None and (isinstance(count, bool) or not isinstance(count, int) or count < 1):
        raise FaultSpecError(f"count: must be an integer >= 1, got {count!r}")
    if fraction is not None and (
        isinstance(fraction, bool) or not isinstance(fraction, int | float) or not 0 < fraction <= 1
    ):
        raise FaultSpecError(f"fraction: must be a number in (0, 1], got {fraction!r}")
    ops = spec.get("operations") or []
    if not isinstance(ops, list) or not all(isinstance(o, str) for o in ops):
        raise FaultSpecError("operations: must be a list of GraphQL operation or root field names")
    latency_ms = _int_field(spec, "latencyMs", 0 if kind != "latency" else 1000, 0, 600_000)
    status = _int_field(spec, "status", 503, 500, 599)
    retry_after = _int_field(spec, "retryAfter", 1, 0, 3600)
    return FaultRule(
        kind=kind,
        remaining=count,
        fraction=float(fraction) if fraction is not None else None,
        operations=frozenset(ops),
        latency_ms=latency_ms,
        status=status,
        retry_after=retry_after,
        rule_id=rule_id,
    )


def _int_field(spec: Mapping[str, Any], name: str, default: int, lo: int, hi: int) -> int:
    value = spec.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise FaultSpecError(f"{name}: must be an integer in [{lo}, {hi}], got {value!r}")
    return value


def _fires(rule: FaultRule, draw: float) -> bool:
    return rule.fraction is None or draw < rule.fraction


def _consume(rules: Sequence[FaultRule], fired: set[int]) -> tuple[FaultRule, ...]:
    out: list[FaultRule] = []
    for r in rules:
        if r.rule_id in fired and r.remaining is not None:
            if r.remaining > 1:
                out.append(replace(r, remaining=r.remaining - 1))
            continue
        out.append(r)
    return tuple(out)


def decide(
    rules: Sequence[FaultRule], names: Iterable[str], draw: float
) -> tuple[FaultEffect, tuple[FaultRule, ...]]:
    """Effect for one /graphql request carrying operation/root-field ``names``.

    Every matching latency rule adds its delay; the first matching terminal rule (in the
    order rules were added) wins. ``import_failed`` never fires here: it is consumed by
    ``take_import_failure`` when an import is created. Count-limited rules that fired are
    decremented (and dropped at zero).
    """
    name_set = frozenset(names)
    latency = 0
    terminal: FaultRule | None = None
    fired: set[int] = set()
    for r in rules:
        if r.kind == "import_failed" or not r.matches(name_set) or not _fires(r, draw):
            continue
        if r.kind == "latency":
            latency += r.latency_ms
            fired.add(r.rule_id)
        elif terminal is None:
            terminal = r
            fired.add(r.rule_id)
            latency += r.latency_ms
    effect = FaultEffect(latency_ms=latency, terminal=terminal, fired=tuple(sorted(fired)))
    return effect, _consume(rules, fired)


def take_import_failure(rules: Sequence[FaultRule], draw: float) -> tuple[bool, tuple[FaultRule, ...]]:
    """Whether the import being created must end FAILED, and the remaining plan."""
    for r in rules:
        if r.kind == "import_failed" and _fires(r, draw):
            return True, _consume(rules, {r.rule_id})
    return False, tuple(rules)
