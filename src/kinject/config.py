"""Configs: pydantic models per stage, YAML files, dotted `key.sub=value` overrides.

Every stage config subclasses `StageConfig`, sets a unique `kind` literal and registers itself
with `@register_config`. A YAML file names its kind (`kind: expert_dapt`), so
`kinject config show --config f.yaml` resolves any file. Unknown or mistyped keys are a
`UserError` naming the key, the file and the valid keys.
"""

from __future__ import annotations

import importlib
import pkgutil
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from kinject.errors import UserError


class StrictModel(BaseModel):
    """Base for every config section: unknown keys are errors, not silently ignored.

    `renamed` maps a section's older key names to their names in the one training vocabulary
    (`learning_rate`, `batch_size`, `max_steps`, `lr_scheduler`, a nested `lora:` section): files
    and overrides with the older names still load; giving both spellings is an error."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())
    renamed: ClassVar[dict[str, str]] = {}

    @model_validator(mode="before")
    @classmethod
    def _older_key_names(cls, data: Any) -> Any:
        if not cls.renamed or not isinstance(data, dict):
            return data
        data = dict(data)
        for old, new in cls.renamed.items():
            if old not in data:
                continue
            head, _, sub = new.partition(".")
            given = data if not sub else dict(data.get(head) or {})
            key = sub or new
            if key in given:
                raise ValueError(f"{old!r} and {new!r} are both given ({old!r} is the older name of {new!r})")
            target = given if not sub else {**cls._section_default(head), **given}
            target[key] = data.pop(old)
            if sub:
                data[head] = target
        return data

    @classmethod
    def _section_default(cls, name: str) -> dict:
        default = cls.model_fields[name].default if name in cls.model_fields else None
        return default.model_dump() if isinstance(default, BaseModel) else {}


class LoraSection(StrictModel):
    """PEFT `LoraConfig` fields, one section for every stage that can train adapters."""

    r: int = Field(16, ge=0, description="rank; 0 = no adapters (a full fine-tune where the stage allows one)")
    alpha: int = Field(32, ge=1)
    dropout: float = Field(0.05, ge=0.0, lt=1.0)
    target_modules: list[str] | str = Field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        description="module names, or 'all-linear'")


class StageConfig(StrictModel):
    kind: str
    seed: int = 0


C = TypeVar("C", bound=StageConfig)
CONFIG_KINDS: dict[str, type[StageConfig]] = {}


def register_config(cls: type[C]) -> type[C]:
    kind = cls.model_fields["kind"].default
    if not isinstance(kind, str):
        raise TypeError(f"{cls.__name__} must give `kind` a string default")
    CONFIG_KINDS[kind] = cls
    return cls


def discover_configs() -> dict[str, type[StageConfig]]:
    """Import every `kinject.<pkg>.config` module so their kinds are registered."""
    import kinject

    for mod in pkgutil.iter_modules(kinject.__path__):
        if mod.ispkg and importlib.util.find_spec(f"kinject.{mod.name}.config") is not None:
            importlib.import_module(f"kinject.{mod.name}.config")
    return CONFIG_KINDS


def parse_override(text: str) -> tuple[list[str], Any]:
    if "=" not in text:
        raise UserError(f"override {text!r} must look like key.sub=value")
    key, raw = text.split("=", 1)
    parts = [p for p in key.strip().split(".")]
    if not all(parts):
        raise UserError(f"override {text!r} has an empty key part")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return parts, value


def apply_overrides(data: dict, overrides: list[str] | tuple[str, ...]) -> dict:
    for text in overrides:
        parts, value = parse_override(text)
        node = data
        for i, part in enumerate(parts[:-1]):
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                where = ".".join(parts[: i + 1])
                raise UserError(f"override {text!r}: {where!r} is a value, not a section")
            node = child
        node[parts[-1]] = value
    return data


def read_yaml(path: str | Path) -> dict:
    p = Path(path)
    if not p.is_file():
        raise UserError(f"config file not found: {p}")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f":{mark.line + 1}" if mark is not None else ""
        raise UserError(f"{p}{where}: invalid YAML ({getattr(e, 'problem', e)})") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise UserError(f"{p}: a config must be a YAML mapping, got {type(data).__name__}")
    return data


def _fields_at(cls: type[BaseModel], loc: tuple) -> list[str]:
    """Valid keys of the section that `loc` points into (for 'unknown key' messages)."""
    model: Any = cls
    for part in loc[:-1]:
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            return []
        field = model.model_fields.get(part)
        if field is None:
            return []
        model = field.annotation
        # Optional[Section] / Section | None
        for arg in getattr(model, "__args__", ()) or ():
            if isinstance(arg, type) and issubclass(arg, BaseModel):
                model = arg
    if isinstance(model, type) and issubclass(model, BaseModel):
        return sorted(model.model_fields)
    return []


def _explain(e: ValidationError, cls: type[BaseModel], source: str) -> UserError:
    err = e.errors()[0]
    loc = tuple(err["loc"])
    key = ".".join(str(p) for p in loc)
    if err["type"] == "extra_forbidden":
        valid = ", ".join(_fields_at(cls, loc)) or "(none)"
        msg = f"unknown config key {key!r} in {source}; valid keys here: {valid}"
    elif err["type"] == "missing":
        msg = f"missing config key {key!r} in {source}"
    else:
        msg = f"bad value for config key {key!r} in {source}: {err['msg']} (got {err.get('input')!r})"
    more = len(e.errors()) - 1
    if more:
        msg += f" (+{more} more problem{'s' if more > 1 else ''})"
    return UserError(msg)


def build_config(cls: type[C], data: dict, source: str = "<config>") -> C:
    try:
        return cls.model_validate(data)
    except ValidationError as e:
        raise _explain(e, cls, source) from None


def load_config(
    path: str | Path | None,
    overrides: list[str] | tuple[str, ...] = (),
    expect: type[C] | None = None,
) -> C:
    """Load a YAML config (or only overrides when path is None), validate it, return the model.

    `expect` pins the class (a command knows what it needs); otherwise the file's `kind` picks it.
    """
    data = read_yaml(path) if path is not None else {}
    source = str(path) if path is not None else "overrides"
    if overrides:
        source += " (with overrides)"
    data = apply_overrides(data, list(overrides))
    if expect is not None:
        kind = expect.model_fields["kind"].default
        data.setdefault("kind", kind)
        if data["kind"] != kind:
            raise UserError(f"{source}: config kind {data['kind']!r} does not fit this command (expects {kind!r})")
        return build_config(expect, data, source)
    kinds = discover_configs()
    kind = data.get("kind")
    if kind not in kinds:
        raise UserError(
            f"{source}: unknown or missing config kind {kind!r}; known kinds: {', '.join(sorted(kinds))}"
        )
    return build_config(kinds[kind], data, source)  # type: ignore[return-value]


def dump_config(cfg: BaseModel) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
