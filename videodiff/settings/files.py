"""Settings files and precedence: reading YAML/JSON settings files, layering them (:func:`merge`,
:func:`resolve`), a model's recorded defaults (:func:`parse_defaults`) and writing settings out (:func:`to_dict`).

Precedence, highest first: the command line, then ``--config FILE``, then environment variables, then the
model's own recorded defaults (``videodiff.json`` in a model folder), then the dataclass defaults;
:func:`resolve` is the one place that layers them.
"""

from __future__ import annotations

import dataclasses
from dataclasses import fields
from pathlib import Path
from typing import Any

from videodiff.errors import UserError
from videodiff.settings.checks import MAX_SETTINGS_BYTES, MAX_YAML_ALIASES, MAX_YAML_DEPTH, MAX_YAML_NODES, named
from videodiff.settings.fields import flag, shown
from videodiff.settings.parse import parse_mapping, parse_pair
from videodiff.settings.render import FIELD_NAMES, INFO_KEY, MODEL_DEFAULT_KEYS, RenderConfig
from videodiff.settings.sample import SampleSettings


def check_keys(values: dict[str, Any], source: str, allowed: tuple[str, ...] = FIELD_NAMES) -> dict[str, Any]:
    """Fail on any key that is not a setting (a typo must not be silently ignored)."""
    unknown = sorted(set(values) - set(allowed))
    if unknown:
        raise UserError(f"{source}: unknown key(s) {named(unknown)}; valid keys: {', '.join(allowed)}")
    return values


def read_text_file(path: str | Path, what: str, limit: int = MAX_SETTINGS_BYTES) -> str:
    """The UTF-8 text of a settings or prompt file: a regular file of at most ``limit`` bytes (never a device,
    a FIFO or ``/dev/zero``, which would block or fill the memory), else a :class:`UserError`."""
    import os
    import stat

    path = Path(path)
    try:
        mode = os.stat(path).st_mode
        if stat.S_ISDIR(mode):
            raise UserError(f"{what} {path} is a folder, not a file")
        if not stat.S_ISREG(mode):
            raise UserError(f"{what} {path} is not a regular file (a device, FIFO or socket)")
        with open(path, "rb") as f:
            data = f.read(limit + 1)
    except FileNotFoundError:
        raise UserError(f"{what} {path} does not exist") from None
    except OSError as exc:
        raise UserError(f"cannot read {what} {path}: {exc.strerror or type(exc).__name__}") from None
    if len(data) > limit:
        raise UserError(f"{what} {path} is larger than {limit // 1024} KiB; a settings or prompt file is smaller")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UserError(f"{what} {path} is not UTF-8 text (byte {exc.start})") from None


class YamlLimit(Exception):
    """A settings document past :data:`MAX_YAML_DEPTH`, :data:`MAX_YAML_ALIASES` or :data:`MAX_YAML_NODES`."""


def _limited_loader() -> type:
    """A ``yaml.SafeLoader`` that refuses deep nesting, many aliases and alias expansion beyond a node count
    (a 357-byte "billion laughs" document names 10^9 values), while it composes: before anything is built."""
    import yaml

    class Loader(yaml.SafeLoader):
        def __init__(self, stream: str) -> None:
            super().__init__(stream)
            self.depth, self.aliases, self.sizes = 0, 0, {}

        def compose_node(self, parent: Any, index: Any) -> Any:
            if self.check_event(yaml.AliasEvent):
                self.aliases += 1
                if self.aliases > MAX_YAML_ALIASES:
                    raise YamlLimit(f"more than {MAX_YAML_ALIASES} aliases (*name)")
            self.depth += 1
            if self.depth > MAX_YAML_DEPTH:
                raise YamlLimit(f"nested more than {MAX_YAML_DEPTH} levels deep")
            try:
                node = super().compose_node(parent, index)
            finally:
                self.depth -= 1
            if id(node) not in self.sizes:  # an alias's node is counted again each time it is used, below
                children = node.value if isinstance(node.value, list) else []
                pairs = [c for child in children for c in (child if isinstance(child, tuple) else (child,))]
                self.sizes[id(node)] = 1 + sum(self.sizes.get(id(c), 1) for c in pairs)
            if self.sizes[id(node)] > MAX_YAML_NODES:
                raise YamlLimit(f"more than {MAX_YAML_NODES} values once its aliases are expanded")
            return node

    return Loader


def yaml_value(text: str) -> Any:
    """YAML from text, within the limits on depth, aliases and size; :class:`YamlLimit`, ``yaml.YAMLError``
    or ``ValueError`` (an integer of more than 4300 digits, a date such as 2001-02-30) for a bad document."""
    import yaml

    return yaml.load(text, Loader=_limited_loader())  # noqa: S506 (a SafeLoader)


def parse_yaml(text: str, path: str | Path, what: str) -> Any:
    """YAML (or JSON) from a file a user gave; syntax errors, absurd nesting, alias bombs, integers too long to
    read and impossible dates in one line."""
    import yaml

    try:
        return yaml_value(text)
    except yaml.YAMLError as exc:
        first = str(exc).splitlines()[0] if str(exc) else "syntax error"
        raise UserError(f"{what} {path} is not valid YAML: {first[:200]}") from None
    except YamlLimit as exc:
        raise UserError(f"{what} {path} is too complex to be a settings file: {exc}") from None
    except RecursionError:
        raise UserError(f"{what} {path} is nested too deeply to be a settings file") from None
    except (ValueError, OverflowError, TypeError) as exc:  # int("9" * 5000), date(2001, 2, 30)
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if "digits" in first:
            first = "an integer of more than 4300 digits"
        raise UserError(f"{what} {path} holds a value that cannot be read: {first[:200]}") from None


#: fingerprints (``info.sources.motion_module.sha256``) of the built-in model's own motion modules before its 4-step
#: default: a sidecar rendered with them names them again by :data:`videodiff.weights.hub.BUILTIN_MOTION_MODULES`
FORMER_BUILTIN_MOTION = {"24d678319dd65d33e62786792a4df82491f5cf1e79be6291da50e63e5ecd8da7": "shapes-teacher"}


def load_config_file(path: str | Path, allowed: tuple[str, ...] = FIELD_NAMES) -> dict[str, Any]:
    """Read a YAML (or JSON: YAML is a superset) settings file; keys are the flag names with underscores.

    A sidecar written beside an output is such a file: its ``info`` part is ignored. A sidecar records every
    setting it rendered with, so one without ``motion_prior_space`` predates the choice and drew in ``latent``
    (the only way then), whatever the model's default is now; other files leave it to the model. A sidecar of the
    built-in model rendered with the motion modules it had before its 4-step default renders with them
    (:data:`FORMER_BUILTIN_MOTION`).
    ``overwrite: true`` is ignored (``false`` is kept: it asks for nothing): only the command line (or the web form)
    may ask to replace a file.
    """
    path = Path(path)
    data = parse_yaml(read_text_file(path, "config file"), path, "config file")
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(f"config file {path} must hold a mapping of settings, not a {type(data).__name__}")
    sidecar = INFO_KEY in data
    if sidecar and data.get("model") in (None, "shapes") and data.get("motion_module") is None:
        sources = data[INFO_KEY].get("sources", {}) if isinstance(data[INFO_KEY], dict) else {}
        used = sources.get("motion_module", {}) if isinstance(sources, dict) else {}
        former = FORMER_BUILTIN_MOTION.get(used.get("sha256", "") if isinstance(used, dict) else "")
        if former is not None:  # the built-in model's motion modules of the time, now beside its default
            data["motion_module"] = former
    # A file someone sends you must not be able to replace your files: --overwrite counts only when typed
    # (or ticked in the web form). ``output`` stays: without ``overwrite`` it can only name a new file.
    data = {str(k): v for k, v in data.items() if k != INFO_KEY and not (k == "overwrite" and v is not False)}
    if sidecar and "motion_prior_space" in allowed:
        data.setdefault("motion_prior_space", "latent")
    return check_keys(data, str(path), allowed)


def merge(*layers: dict[str, Any], cls: type = RenderConfig) -> Any:
    """Build a ``cls`` config from layers, lowest precedence first; ``None`` values in a layer do not override."""
    values: dict[str, Any] = {}
    for layer in layers:
        values.update({k: v for k, v in layer.items() if v is not None})
    check_keys(values, "settings", tuple(f.name for f in fields(cls)))
    # YAML may give 8 for fps or 7 for guidance: accept ints where floats are expected; lists for repeatable flags.
    for f in fields(cls):
        value = values.get(f.name)
        if str(f.type).startswith("dict[int, str]") and isinstance(value, (dict, list, tuple, str)):
            values[f.name] = parse_mapping(value)  # JSON sidecars' keys are text; YAML may list FRAME:TEXT
            continue
        if str(f.type).startswith("tuple[float") and isinstance(value, str):  # YAML's `guidance_interval: 0,0.5`
            values[f.name] = parse_pair(value, f"--{flag(f.name)}")
            continue
        if str(f.type).startswith("tuple") and isinstance(value, (list, str)):
            values[f.name] = tuple(value) if isinstance(value, list) else (value,)
            continue
        is_float = "float" in str(f.type) and "int" not in str(f.type)
        if is_float and isinstance(value, int) and not isinstance(value, bool):
            values[f.name] = float(value)
        elif is_float and isinstance(value, str):  # YAML 1.1 reads 1e-4 (no dot) as text
            try:
                values[f.name] = float(value)
            except ValueError:
                pass  # check_types reports it
    return cls(**values)


def resolve(model_defaults: dict[str, Any], *layers: dict[str, Any], cls: type = RenderConfig) -> Any:
    """The validated ``cls`` settings: the model's recorded defaults (those ``cls`` has), then ``layers``
    (lowest precedence first) over the built-in defaults. The one place settings meet a model's defaults."""
    names = {f.name for f in fields(cls)}
    recorded = {k: v for k, v in model_defaults.items() if k in names}
    return merge(recorded, *layers, cls=cls).validate()


def key_values(specs: tuple[str, ...] | list[str], allowed: tuple[str, ...] | list[str], flag: str) -> dict[str, Any]:
    """``KEY=VALUE`` strings (``--set steps=10``, ``--default steps=4``) as ``{key: value}``, keys among ``allowed``
    (dashes read as underscores), values read as YAML (``4``, ``true``, ``0,0.5``) within the settings files' limits,
    else kept as text for the type check to name. A key outside ``allowed`` is a :class:`UserError` naming them."""
    import yaml

    values: dict[str, Any] = {}
    for spec in specs:
        key, sep, text = str(spec).partition("=")
        key = key.strip().replace("-", "_")
        if not sep or key not in allowed:
            raise UserError(f"{flag} must be KEY=VALUE, KEY one of {', '.join(allowed)}; got {shown(spec)}")
        try:
            values[key] = yaml_value(text)
        except (yaml.YAMLError, YamlLimit, RecursionError, ValueError, OverflowError, TypeError):
            values[key] = text  # read as text: the type check says what it should be
    return values


def parse_defaults(specs: tuple[str, ...] | list[str]) -> dict[str, Any]:
    """``KEY=VALUE`` settings for a folder's ``videodiff.json`` defaults (``videodiff convert --default``): keys of
    :data:`MODEL_DEFAULT_KEYS` (:func:`key_values`), checked as a render would."""
    values = key_values(specs, MODEL_DEFAULT_KEYS, "--default")
    settings = merge(values, cls=SampleSettings).validate()
    return {k: list(v) if isinstance(v, tuple) else v for k in values if (v := getattr(settings, k)) is not None}


def parse_settings(specs: tuple[str, ...] | list[str], *classes: type, flag: str = "--set") -> list[dict[str, Any]]:
    """``KEY=VALUE`` strings (``--set steps=10``, :func:`key_values`) as the given settings of each class in
    ``classes``: a dict of the keys that are its fields, checked by building and validating that class."""
    values = key_values(specs, [f.name for cls in classes for f in fields(cls)], flag)
    out = []
    for cls in classes:
        mine = {k: v for k, v in values.items() if k in {f.name for f in fields(cls)}}
        checked = merge(mine, cls=cls).validate()
        out.append({k: getattr(checked, k) for k in mine})
    return out


def to_dict(config: Any) -> dict[str, Any]:
    """A settings object as a plain dict (what a sidecar records)."""
    return dataclasses.asdict(config)
