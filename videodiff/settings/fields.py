"""What a settings field says about itself: default, help, choices and bounds, in the field's metadata.

:func:`setting` writes a field (the one place its default, help text, closed set of names and numeric bounds
are written); :func:`options` reads them back, so that option lists (the command line, the web form, eval and
train help) can be generated from the dataclasses; :func:`check_bounds` and :func:`check_choices` are the
checks that ``validate()`` runs from the same metadata.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator
from typing import Any, NamedTuple

from videodiff.errors import UserError

MAX_SHOWN = 60  # characters of a value an error message quotes: never the whole of a 1 MiB or alias-expanded value


def shown(value: Any, limit: int = MAX_SHOWN) -> str:
    """A bounded ``repr`` of ``value`` for an error message: at most ``limit`` characters, and never the full
    expansion of a nested or alias-shared value (reprlib stops at a few items per level and a few levels)."""
    import reprlib

    short = reprlib.Repr()
    short.maxlevel, short.maxlist, short.maxtuple, short.maxdict, short.maxset = 3, 4, 4, 4, 4
    short.maxstring, short.maxlong, short.maxother = limit, limit, limit
    text = short.repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def setting(
    default: Any,
    help: str,
    *,
    choices: tuple[str, ...] | None = None,
    cli_choice: bool = True,
    min: float | None = None,
    max: float | None = None,
    min_open: bool = False,
    max_open: bool = False,
    finite: bool = True,
    step: int | None = None,
    must: str | None = None,
    too_large: str | None = None,
    **cli: Any,
) -> Any:
    """A settings field: its default (the one place it is written), help, closed set of names and bounds.

    ``choices`` is the closed set of names; with ``cli_choice`` (the default) the command line makes the flag a
    choice, with completion (:func:`videodiff.cli.options_from` reads ``metadata["choices"]``); without it the
    names are kept as ``metadata["validate_choices"]``, and only ``validate()`` reports a wrong one (its message).

    ``min``/``max`` bound a number (inclusive unless ``min_open``/``max_open``); a float must also be finite
    unless ``finite`` is false (then ``validate()`` says so itself). ``must`` completes the error
    ``--flag must be <must>, got <value>`` (derived for whole numbers >= 0 or > 0); ``too_large`` is the error
    above ``max``, a template of ``flag``, ``value`` and ``max``, where it differs. ``step``: values are
    multiples of it (checked by ``validate()``, shown by forms).

    ``cli`` may name ``short`` (``"-o"``) and ``env`` (an environment variable) for the flag.
    """
    meta: dict[str, Any] = {"help": help, **cli}
    if choices is not None:
        meta["choices" if cli_choice else "validate_choices"] = tuple(choices)
    bounds = {"min": min, "max": max, "step": step, "must": must, "too_large": too_large}
    meta.update({k: v for k, v in bounds.items() if v is not None})
    if min_open:
        meta["min_open"] = True
    if max_open:
        meta["max_open"] = True
    if not finite:
        meta["finite"] = False
    return dataclasses.field(default=default, metadata=meta)


class Option(NamedTuple):
    """One settings field as an option: what option lists (CLI, web form, eval, train help) are made from."""

    name: str
    type: str  # the annotation as written: "int", "float | None", "tuple[str, ...]"
    default: Any
    help: str
    choices: tuple[str, ...] | None
    min: float | None
    max: float | None
    min_open: bool = False
    max_open: bool = False
    step: int | None = None
    env: str | None = None
    short: str | None = None


def choices_of(f: dataclasses.Field) -> tuple[str, ...] | None:
    """The closed set of names a field takes (whichever of the command line or ``validate()`` checks it)."""
    return f.metadata.get("choices", f.metadata.get("validate_choices"))


def options(cls: Any) -> Iterator[Option]:
    """Each field of the settings dataclass ``cls`` (or an instance), in field order, as an :class:`Option`."""
    for f in dataclasses.fields(cls):
        meta = f.metadata
        yield Option(
            name=f.name,
            type=str(f.type),
            default=f.default,
            help=meta.get("help", ""),
            choices=choices_of(f),
            min=meta.get("min"),
            max=meta.get("max"),
            min_open=meta.get("min_open", False),
            max_open=meta.get("max_open", False),
            step=meta.get("step"),
            env=meta.get("env"),
            short=meta.get("short"),
        )


def help_by_field(cls: Any) -> dict[str, str]:
    """``{field: help text}`` of a settings dataclass (what a ``helps`` table of the command line held)."""
    return {o.name: o.help for o in options(cls)}


def choices_by_field(cls: Any) -> dict[str, tuple[str, ...]]:
    """``{field: names}`` for every field of ``cls`` that takes one of a closed set of names."""
    return {o.name: o.choices for o in options(cls) if o.choices}


def whole_number_fields(cls: Any) -> tuple[str, ...]:
    """The fields of ``cls`` that hold whole numbers (``int`` or ``int | None``), in field order."""
    return tuple(o.name for o in options(cls) if o.type.startswith("int"))


def flag(name: str) -> str:
    """The command-line flag of a field, without dashes in front: ``noise_alpha`` -> ``noise-alpha``."""
    return name.replace("_", "-")


def _field(config: Any, name: str) -> dataclasses.Field:
    return next(f for f in dataclasses.fields(config) if f.name == name)


def must_text(f: dataclasses.Field) -> str:
    """What a value of the field must be, as the error says it: ``a positive whole number``."""
    meta = f.metadata
    if "must" in meta:
        return meta["must"]
    lower_only = "max" not in meta or "too_large" in meta  # the words speak of the lower bound alone
    if meta.get("min") == 1 and lower_only:
        return "a positive whole number"
    if meta.get("min") == 0 and lower_only:
        return "a whole number >= 0"
    raise AssertionError(f"{f.name}: bounds without the words for them (setting(must=...))")


def out_of_bounds(config: Any, name: str) -> UserError:
    """The error for a value of ``name`` outside its bounds (or not a number at all)."""
    value = getattr(config, name)
    return UserError(f"--{flag(name)} must be {must_text(_field(config, name))}, got {shown(value)}")


def _is_number(value: Any, kind: str) -> bool:
    if isinstance(value, bool):
        return False
    return isinstance(value, int) if kind.startswith("int") else isinstance(value, (int, float))


def _below_min(value: float, meta: Any) -> bool:
    low = meta.get("min")
    return low is not None and not (value > low if meta.get("min_open") else value >= low)


def _above_max(value: float, meta: Any) -> bool:
    high = meta.get("max")
    return high is not None and not (value < high if meta.get("max_open") else value <= high)


def check_bounds(config: Any, *names: str, lower: bool = True, upper: bool = True) -> None:
    """Raise :class:`UserError` for the first of ``names`` whose value is outside its field's bounds (``None``
    passes: whether a field may be empty is :func:`videodiff.settings.checks.check_types`' business).
    ``lower``/``upper`` pick the side checked, so that a validator keeps the order its errors come in."""
    for name in names:
        f = _field(config, name)
        meta, value = f.metadata, getattr(config, name)
        if value is None:
            continue
        if not _is_number(value, str(f.type)):
            raise out_of_bounds(config, name)
        if lower and (_below_min(value, meta) or (isinstance(value, float) and math.isnan(value))):
            raise out_of_bounds(config, name)
        if lower and isinstance(value, float) and meta.get("finite", True) and not math.isfinite(value):
            raise out_of_bounds(config, name)
        if upper and _above_max(value, meta):
            template = meta.get("too_large")
            if template is None:
                raise out_of_bounds(config, name)
            raise UserError(template.format(flag=flag(name), value=value, max=meta["max"]))


def check_choices(config: Any, *names: str) -> None:
    """Raise :class:`UserError` if one of ``names`` holds a name outside its field's choices (``None`` passes
    where the field may be empty)."""
    for name in names:
        f = _field(config, name)
        value, allowed = getattr(config, name), choices_of(f)
        if value is None and "None" in str(f.type):
            continue
        if value not in allowed:
            raise UserError(f"unknown --{flag(name)} {shown(value)}; choose one of: {', '.join(allowed)}")


def composite_items(value: Any, key: str, noun: str, limit: int, parse: Any) -> tuple:
    """The items of a composite setting (a list of mappings: ``controls``, ``ip_adapters``), each read by ``parse``;
    a one-line :class:`UserError` for anything but a list, or for more than ``limit`` items."""
    if not isinstance(value, (tuple, list)):
        raise UserError(f"{key} must be a list of mappings, got {shown(value)}")
    if len(value) > limit:
        raise UserError(f"{len(value)} {noun} are too many: at most {limit}")
    return tuple(parse(v) for v in value)
