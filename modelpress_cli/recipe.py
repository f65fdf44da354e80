"""Recipes: per-tensor options from a TOML file, matched on tensor names.

```toml
[defaults]              # any compress option; flags given on the command line win
bits = 4

[[rules]]               # first match wins; rules always win over defaults and flags
match = "*embed*"       # a glob on the tensor name, or "re:<regex>" (the whole name must match)
bits = 8

[[rules]]
match = "re:.*\\.bias"
keep = true             # lossless
```
Keys: bits, group_size, symmetric, prune, nm ("2:4", or "none" to turn the defaults' off),
half, and in [defaults] also min_elements and quantize_1d.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ConfigError, ModelpressError
from .pipeline import Options

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

STAGE_KEYS = {"bits", "group_size", "symmetric", "prune", "nm", "half"}
DEFAULT_KEYS = STAGE_KEYS | {"min_elements", "quantize_1d", "embed_bits"}
RULE_KEYS = STAGE_KEYS | {"match", "keep"}


@dataclass(frozen=True)
class Rule:
    """One `[[rules]]` entry: which tensors it matches and the options it sets for them."""

    label: str
    match: str
    settings: dict[str, Any]

    def matches(self, name: str) -> bool:
        if self.match.startswith("re:"):
            return re.fullmatch(self.match[3:], name) is not None
        return fnmatch.fnmatchcase(name, self.match)

    def apply(self, base: Options) -> Options:
        """`base` with this rule's settings; a fraction and a pattern of pruning exclude
        each other, so setting one clears the other."""
        settings = _none_means_off(self.settings)
        if settings.pop("keep", False):
            return dataclasses.replace(base, keep=True, rule=self.label)
        if "nm" in settings:
            settings.setdefault("prune", 0.0)
        if settings.get("prune"):
            settings.setdefault("nm", None)
        forced = bool(settings.keys() & {"bits", "prune", "nm"})
        return dataclasses.replace(base, **settings, rule=self.label, forced=forced)


@dataclass(frozen=True)
class Recipe:
    """Defaults and ordered rules from a recipe file."""

    path: Path
    defaults: dict[str, Any] = field(default_factory=dict)
    rules: tuple[Rule, ...] = ()

    def match(self, name: str) -> Rule | None:
        """The first rule that matches a tensor name, if any."""
        return next((rule for rule in self.rules if rule.matches(name)), None)


def load_recipe(path: str | Path) -> Recipe:
    """Read and check a recipe; ConfigError naming the line, key or rule at fault."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError("recipe file not found", path=path) from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"not valid TOML: {e}", path=path) from None
    unknown = set(data) - {"defaults", "rules"}
    if unknown:
        raise ConfigError(f"unknown section(s) {sorted(unknown)}; a recipe has [defaults] and "
                          "[[rules]]", path=path)
    defaults = data.get("defaults", {})
    _check_keys(defaults, DEFAULT_KEYS, "[defaults]", path)
    defaults = _none_means_off(defaults)
    base = _options(Options(), defaults, "[defaults]", path)
    if not isinstance(base.quantize_1d, bool):
        raise ConfigError("[defaults]: quantize_1d must be true or false", path=path)
    rules = []
    if not isinstance(data.get("rules", []), list):
        raise ConfigError("rules must be an array of tables: write [[rules]], not [rules]",
                          path=path)
    for i, raw in enumerate(data.get("rules", [])):
        label = f"rules[{i}]"
        if not isinstance(raw, dict) or not isinstance(raw.get("match"), str):
            raise ConfigError(f"{label} needs match = \"<glob>\" or \"re:<regex>\"", path=path)
        label += f" ({raw['match']})"
        _check_keys(raw, RULE_KEYS, label, path)
        if raw["match"].startswith("re:"):
            try:
                re.compile(raw["match"][3:])
            except re.error as e:
                raise ConfigError(f"{label}: bad regular expression ({e})", path=path) from None
        if "keep" in raw and (raw["keep"] is not True or len(raw) > 2):
            raise ConfigError(f"{label}: keep = true stands alone (it means lossless); to "
                              "compress a tensor, give options instead", path=path)
        rule = Rule(label, raw["match"], {k: v for k, v in raw.items() if k != "match"})
        try:
            rule.apply(base)  # Options validates every value
        except ModelpressError as e:
            raise ConfigError(f"{label}: {e.message}", path=path) from None
        rules.append(rule)
    return Recipe(path, defaults, tuple(rules))


def _none_means_off(settings: dict[str, Any]) -> dict[str, Any]:
    """TOML has no null: nm = "none" turns a pattern from the defaults off."""
    return {k: None if (k == "nm" and v == "none") else v for k, v in settings.items()}


def _check_keys(table: Any, allowed: set[str], where: str, path: Path) -> None:
    if not isinstance(table, dict):
        raise ConfigError(f"{where} must be a table of options", path=path)
    unknown = sorted(set(table) - allowed)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)}; allowed: "
                          f"{', '.join(sorted(allowed))}", path=path)


def _options(base: Options, settings: dict, where: str, path: Path) -> Options:
    try:
        return dataclasses.replace(base, **settings)
    except ModelpressError as e:
        raise ConfigError(f"{where}: {e.message}", path=path) from None
    except TypeError as e:
        raise ConfigError(f"{where}: {e}", path=path) from None
