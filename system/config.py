"""Load the runtime configuration: packaged defaults < user file < SWARM__ env overlay,
with secret references resolved, JSON-Schema validation, provenance and a diff for reload.

Besides the standard keywords the schema may use ``x-placeholders`` (a list of names) on a
string or a mapping of strings: each is a ``str.format`` template filled with text, whose fields
must be plain names from that list. So a service's message templates are checked at load (and
``swarm config check``, and a reload), by key path, without this module knowing the service."""
from __future__ import annotations

import copy
import hashlib
import json
import os
import re
import string
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from importlib.resources import files
from pathlib import Path
from typing import Any

import yaml
from jsonschema import Draft202012Validator, ValidationError, validators

from system.errors import ConfigError

__all__ = ["Config", "ConfigDiff", "diff", "file_fingerprint", "find_config_file", "load_config"]

DEFAULTS = "defaults"
ENV_PREFIX = "SWARM__"
_SECRET_RE = re.compile(r"^\$\{(env|file):(.+)\}$")
_RELATIVE_PATHS = ("system.data_dir", "agents.workspace_root")
_NAME_RULE = "lower-case letters, digits and _, starting with a letter"
_TYPE_NAMES = {"integer": "integer", "number": "number", "string": "string", "boolean": "boolean",
               "array": "list", "object": "mapping", "null": "null"}


class _Loader(yaml.SafeLoader):
    """YAML 1.2-style scalars: only true/false are booleans (``OFF`` stays a string), dates
    stay strings (msgpack-able); a duplicate or non-string key is an error, not a surprise."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: set = set()
        for key_node, _ in node.value:
            if key_node.tag != "tag:yaml.org,2002:merge":
                key = self.construct_object(key_node, deep=True)
                problem = ("keys must be strings" if not isinstance(key, str)
                           else "duplicate key" if key in seen else None)
                if problem:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"{problem}: {key!r}", key_node.start_mark)
                seen.add(key)
        return super().construct_mapping(node, deep=deep)


_Loader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers
            if tag not in ("tag:yaml.org,2002:bool", "tag:yaml.org,2002:timestamp")]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()}
_Loader.add_implicit_resolver("tag:yaml.org,2002:bool",
                              re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF"))


def template_problems(text: str, names: list[str] | tuple[str, ...]) -> list[str]:
    """Why ``text`` is not a ``str.format`` template over the placeholders ``names`` (filled
    with text), or [].

    >>> template_problems("{agent} at {progress}% {foo} {agent.x}", ["agent", "progress"])
    ['unknown placeholder {foo}; known: agent, progress', '{agent.x}: only plain names']
    """
    problems: list[str] = []

    def fields(fmt: str) -> Iterator[str]:
        for _, name, spec, _ in string.Formatter().parse(fmt):
            if name is not None:
                yield name
                yield from fields(spec or "")

    try:
        found = list(fields(text))
    except ValueError as exc:
        return [f"not a valid template: {exc}"]
    for name in found:
        if not name:
            problems.append("{} needs a placeholder name")
        elif not name.isidentifier():
            problems.append(f"{{{name}}}: only plain names")
        elif name not in names:
            problems.append(f"unknown placeholder {{{name}}}; known: {', '.join(names)}")
    if not problems:
        try:
            text.format(**dict.fromkeys(names, ""))
        except (ValueError, KeyError, IndexError) as exc:
            problems.append(f"not a valid template: {exc}")
    return problems


def _placeholders(validator, names, instance, schema) -> Iterator[ValidationError]:
    texts = instance.items() if isinstance(instance, dict) else [(None, instance)]
    for key, text in texts:
        if isinstance(text, str):
            for problem in template_problems(text, names):
                yield ValidationError(problem, path=() if key is None else (key,))


_Validator = validators.extend(Draft202012Validator, {"x-placeholders": _placeholders})


@lru_cache(maxsize=1)
def _schema() -> dict:
    return json.loads(files("config").joinpath("schema.json").read_text(encoding="utf-8"))


class Config:
    """The effective configuration of one load. Secret values stay out of ``repr``,
    ``redacted()`` and ``describe()``; only ``data`` and ``to_wire()`` hold them.

    >>> cfg = load_config(env={})
    >>> cfg.get("services.queue.batch_max")
    500
    """

    def __init__(self, data: dict, *, file: Path | None = None,
                 sources: dict[str, str] | None = None, secret_paths: set[str] | None = None,
                 secret_values: set[str] | None = None, digest: str = "") -> None:
        self.data = data
        self.file = file
        self.sources = sources or {}
        self.secret_paths = set(secret_paths or ())
        self.secret_values = set(secret_values or ())
        self.digest = digest

    def __repr__(self) -> str:
        return (f"Config(file={str(self.file) if self.file else None!r}, "
                f"digest={self.digest[:12]!r}, services={sorted(self.data.get('services', {}))})")

    def get(self, path: str, default: Any = None) -> Any:
        """Value at a dotted key path (a copy), or ``default``: ``cfg.get("system.admin_port")``."""
        node: Any = self.data
        for part in path.split("."):
            if isinstance(node, dict) and part in node:
                node = node[part]
            elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
                node = node[int(part)]
            else:
                return default
        return copy.deepcopy(node)

    def redacted(self) -> dict:
        """Deep copy of ``data`` with every secret leaf replaced by ``"***"``."""
        out = copy.deepcopy(self.data)
        for path in self.secret_paths:
            *parents, last = path.split(".")
            node: Any = out
            for part in parents:
                node = node[int(part)] if isinstance(node, list) else node[part]
            node[int(last) if isinstance(node, list) else last] = "***"
        return out

    def describe(self) -> list[tuple[str, object, str]]:
        """``(key path, redacted value, source)`` per leaf in file order: ``config show``."""
        return [(path, value, self.sources.get(path, DEFAULTS))
                for path, value in _leaves(self.redacted())]

    def services(self) -> dict[str, dict]:
        """Every service block (enabled or not) by name, generic defaults filled in."""
        return copy.deepcopy(self.data["services"])

    def runtime(self) -> dict:
        """The dict actors receive: ``data`` plus ``_secret_values`` (what their logs redact)
        and ``_file`` (what a reload re-reads). Holds resolved secrets: never log it."""
        return {**self.data, "_secret_values": sorted(self.secret_values),
                "_file": str(self.file) if self.file else None}

    def to_wire(self) -> dict:
        """Plain msgpack-able dict, secrets included (never log it): ``Config.from_wire(d)``."""
        return {"v": 1, "data": copy.deepcopy(self.data),
                "file": str(self.file) if self.file else None, "sources": dict(self.sources),
                "secret_paths": sorted(self.secret_paths),
                "secret_values": sorted(self.secret_values), "digest": self.digest}

    @classmethod
    def from_wire(cls, d: Mapping[str, Any]) -> Config:
        """Rebuild a Config sent by ``to_wire()`` from another process."""
        if d.get("v") != 1:
            raise ConfigError(f"config: unsupported wire version {d.get('v')!r}")
        return cls(d["data"], file=Path(d["file"]) if d["file"] else None,
                   sources=dict(d["sources"]), secret_paths=set(d["secret_paths"]),
                   secret_values=set(d["secret_values"]), digest=d["digest"])


@dataclass(frozen=True)
class ConfigDiff:
    """What a reload changes. A service whose ``enabled`` flips counts as added/removed;
    ``changed_services`` maps a service enabled before and after to its changed top-level keys."""

    added_services: frozenset[str] = frozenset()
    removed_services: frozenset[str] = frozenset()
    changed_services: dict[str, frozenset[str]] = field(default_factory=dict)
    system_changed: frozenset[str] = frozenset()
    supervision_changed: bool = False
    health_changed: bool = False
    agents_changed: bool = False

    @property
    def empty(self) -> bool:
        """True when applying the new config would change nothing."""
        return not (self.added_services or self.removed_services or self.changed_services
                    or self.system_changed or self.supervision_changed
                    or self.health_changed or self.agents_changed)


def find_config_file(cli_path: str | None, env: Mapping[str, str], *,
                     cwd: Path | None = None) -> Path | None:
    """The user config file: ``-c PATH``, else ``$SWARM_CONFIG``, else ``./swarm.yaml``, else
    None (packaged defaults only). A path that was asked for but does not exist is an error.

    >>> find_config_file(None, {}, cwd=Path("/")) is None  # nothing asked for, none in /
    True
    """
    base = (cwd or Path.cwd()).absolute()
    for given, origin in ((cli_path, ""), (env.get("SWARM_CONFIG"), " (from $SWARM_CONFIG)")):
        if given:
            path = Path(os.path.normpath(base / Path(given).expanduser()))
            if not path.exists():
                raise ConfigError(f"config file not found: {given}{origin}")
            return path
    local = base / "swarm.yaml"
    return local if local.exists() else None


def load_config(cli_path: str | None = None, env: Mapping[str, str] | None = None, *,
                cwd: Path | None = None) -> Config:
    """Load, merge, resolve and validate; raise ConfigError listing every problem found.

    >>> cfg = load_config(None, {"SWARM__SYSTEM__LOG_LEVEL": "debug"})
    >>> cfg.get("system.log_level"), cfg.sources["system.log_level"]
    ('debug', 'env SWARM__SYSTEM__LOG_LEVEL')
    """
    env = os.environ if env is None else env
    cwd = (cwd or Path.cwd()).absolute()
    path = find_config_file(cli_path, env, cwd=cwd)
    errors: list[str] = []
    data: dict = {}
    sources: dict[str, str] = {}
    packaged = files("config").joinpath("swarm.yaml").read_bytes()
    _merge(data, _parse(packaged, DEFAULTS, errors), DEFAULTS, sources, "")
    raw = b""
    if path is not None:
        try:
            raw = path.read_bytes()
        except OSError as exc:
            raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
        _merge(data, _parse(raw, str(path), errors), str(path), sources, "")
    overlay = sorted((k, v) for k, v in env.items() if k.startswith(ENV_PREFIX))
    for name, value in overlay:
        parts = name[len(ENV_PREFIX):].lower().split("__")
        if not all(parts):
            errors.append(f"env {name}: malformed name, expected SWARM__SECTION__KEY")
            continue
        node: Any = _env_value(value)
        for part in reversed(parts):
            node = {part: node}
        _merge(data, node, f"env {name}", sources, "")
    if errors:
        raise ConfigError(errors)

    secret_paths, secret_values = _resolve_secrets(data, env, cwd, sources, errors)
    for key_path in _RELATIVE_PATHS:
        name, key = key_path.split(".")
        section = data.get(name)
        if isinstance(section, dict) and isinstance(section.get(key), str) and section[key]:
            section[key] = os.path.normpath(cwd / os.path.expanduser(section[key]))
    errors += _schema_errors(data, sources, secret_paths)
    errors += _dependency_errors(data, sources)
    if errors:
        raise ConfigError(errors)
    _fill_service_defaults(data, sources)
    digest = hashlib.sha256(raw + b"\0" + "\n".join(f"{k}={v}" for k, v in overlay).encode())
    return Config(data, file=path, sources=sources, secret_paths=secret_paths,
                  secret_values=secret_values, digest=digest.hexdigest())


def diff(old: Config, new: Config) -> ConfigDiff:
    """What changed between two loads, for ``swarm reload``.

    >>> diff(load_config(env={}), load_config(env={"SWARM__HEALTH__TIMEOUT_S": "9"})).empty
    False
    """
    def enabled(cfg: Config) -> dict[str, dict]:
        return {n: s for n, s in cfg.services().items() if s.get("enabled", True)}

    before, after = enabled(old), enabled(new)
    changed = {}
    for name in before.keys() & after.keys():
        keys = {k for k in before[name].keys() | after[name].keys()
                if before[name].get(k) != after[name].get(k)}
        if keys:
            changed[name] = frozenset(keys)
    old_sys, new_sys = dict(_leaves(old.data["system"], "system")), dict(
        _leaves(new.data["system"], "system"))
    return ConfigDiff(
        added_services=frozenset(after.keys() - before.keys()),
        removed_services=frozenset(before.keys() - after.keys()),
        changed_services=changed,
        system_changed=frozenset(k for k in old_sys.keys() | new_sys.keys()
                                 if old_sys.get(k) != new_sys.get(k)),
        supervision_changed=old.data["supervision"] != new.data["supervision"],
        health_changed=old.data["health"] != new.data["health"],
        agents_changed=old.data["agents"] != new.data["agents"])


def file_fingerprint(path: Path) -> tuple[float, str]:
    """``(mtime, sha256 hex)`` of a file, for the reload watcher to compare."""
    try:
        return path.stat().st_mtime, hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None


# --- loading -------------------------------------------------------------------------------

def _parse(raw: bytes, label: str, errors: list[str]) -> dict:
    """One YAML layer as a mapping (empty file = {}); problems go to ``errors``."""
    try:
        loaded = yaml.load(raw.decode("utf-8"), Loader=_Loader)
    except UnicodeDecodeError:
        errors.append(f"{label}: not valid UTF-8")
        return {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        errors.append(f"{label}: YAML error at {where}{getattr(exc, 'problem', None) or exc}")
        return {}
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        errors.append(f"{label}: expected a mapping of sections at the top level, "
                      f"found {_show(loaded)}")
        return {}
    return loaded


def _env_value(text: str) -> Any:
    """An env override as a YAML scalar or flow list ("500" -> 500, "null" -> None,
    "[a, b]" -> list); anything else (empty, multi-line, " #", a mapping) stays the raw string."""
    if not text.strip() or "\n" in text or re.search(r"\s#", text):
        return text
    try:
        value = yaml.load(text, Loader=_Loader)
    except yaml.YAMLError:
        return text
    return text if isinstance(value, dict) else value


def _merge(dst: dict, src: dict, label: str, sources: dict[str, str], prefix: str) -> None:
    """Deep-merge ``src`` into ``dst`` (mappings merge; lists and scalars replace)."""
    for key, value in src.items():
        path = _join(prefix, str(key))
        if isinstance(value, dict) and isinstance(dst.get(key), dict):
            if value:
                sources.pop(path, None)  # an empty mapping was a leaf; now it has children
            _merge(dst[key], value, label, sources, path)
            continue
        for stale in [p for p in sources if p == path or p.startswith(path + ".")]:
            del sources[stale]
        dst[key] = copy.deepcopy(value)
        sources.update((p, label) for p, _ in _leaves(value, path))


def _resolve_secrets(data: dict, env: Mapping[str, str], cwd: Path, sources: dict[str, str],
                     errors: list[str]) -> tuple[set[str], set[str]]:
    """Replace ``${env:NAME}`` / ``${file:PATH}`` strings in place, except under disabled
    services (left as they are). Errors name the key and the reference, never a value."""
    paths: set[str] = set()
    values: set[str] = set()
    services = data.get("services")
    for path, parent, key, ref in _secret_refs(data, ""):
        parts = path.split(".")
        if parts[0] == "services" and len(parts) > 2 and isinstance(services, dict):
            block = services.get(parts[1])
            if isinstance(block, dict) and block.get("enabled", True) is False:
                continue
        kind, target = _SECRET_RE.match(ref).groups()
        problem = None
        if kind == "env":
            value = env.get(target)
            problem = ("environment variable is not set" if value is None
                       else "environment variable is empty" if not value else None)
        else:
            try:
                value = (cwd / Path(target).expanduser()).read_text(encoding="utf-8")
                value = value[:-2] if value.endswith("\r\n") else value.removesuffix("\n")
                problem = None if value else "file is empty"
            except OSError as exc:
                problem = f"cannot read file: {exc.strerror}"
            except UnicodeDecodeError:
                problem = "file is not valid UTF-8 text"
        if problem:
            errors.append(f"{_source(path, sources)}: {path}: secret {ref}: {problem}")
            continue
        parent[key] = value
        paths.add(path)
        values.add(value)
    return paths, values


def _secret_refs(node: Any, prefix: str) -> Iterator[tuple[str, Any, Any, str]]:
    items = node.items() if isinstance(node, dict) else enumerate(node)
    for key, value in list(items):
        path = _join(prefix, str(key))
        if isinstance(value, (dict, list)):
            yield from _secret_refs(value, path)
        elif isinstance(value, str) and _SECRET_RE.match(value):
            yield path, node, key, value


def _fill_service_defaults(data: dict, sources: dict[str, str]) -> None:
    generic = _schema()["$defs"]["service_keys"]["properties"]
    for name, block in data["services"].items():
        for key, spec in generic.items():
            if "default" in spec and key not in block:
                block[key] = copy.deepcopy(spec["default"])
                sources[f"services.{name}.{key}"] = DEFAULTS


# --- validation messages -------------------------------------------------------------------

def _schema_errors(data: dict, sources: dict[str, str], secrets: set[str]) -> list[str]:
    """Every schema violation as ``"<source>: <key.path>: <expected ..., found ...>"``."""
    found = set()  # (path the problem is attributed to, path shown, message)
    for err in _Validator(_schema()).iter_errors(data):
        path = ".".join(str(p) for p in err.absolute_path)
        if err.validator == "x-placeholders":
            found.add((path, path, err.message))
        elif err.validator in ("additionalProperties", "unevaluatedProperties"):
            known = _known_keys(err.schema)
            found |= {(_join(path, k), path, f"unknown key {k!r}")
                      for k in err.instance if k not in known}
        elif err.validator == "required":
            found |= {(path, path, f"missing required key {k!r}")
                      for k in err.validator_value if k not in err.instance}
        elif "propertyNames" in err.schema_path:
            message = f"invalid name {err.instance!r}: expected {_NAME_RULE}"
            found.add((_join(path, str(err.instance)), path, message))
        elif any(p == path or p.startswith(path + ".") for p in secrets):
            found.add((path, path, f"expected {_expected(err.schema)}, found a secret (hidden)"))
        elif err.validator == "uniqueItems":
            twice = ", ".join(sorted({repr(v) for i, v in enumerate(err.instance)
                                      if v in err.instance[:i]}))
            found.add((path, path, f"expected no duplicates, found {twice} more than once"))
        else:
            message = f"expected {_expected(err.schema)}, found {_show(err.instance)}"
            found.add((path, path, message))
    return [f"{_source(src, sources)}: {shown or '(top level)'}: {message}"
            for src, shown, message in sorted(found)]


def _dependency_errors(data: dict, sources: dict[str, str]) -> list[str]:
    """depends_on must name existing services and must not form a cycle."""
    services = data.get("services")
    if not isinstance(services, dict):
        return []
    graph = {name: {d for d in block.get("depends_on") or [] if isinstance(d, str)}
             for name, block in services.items()
             if isinstance(block, dict) and isinstance(block.get("depends_on", []), list)}
    errors = [f"{_source(f'services.{n}.depends_on', sources)}: services.{n}.depends_on: "
              f"unknown service {d!r}" for n, deps in graph.items() for d in sorted(deps)
              if d not in services]
    pending = {name: deps & graph.keys() for name, deps in graph.items()}
    while ready := [name for name, deps in pending.items() if not deps]:
        for name in ready:
            del pending[name]
        for deps in pending.values():
            deps.difference_update(ready)
    if pending:
        errors.append(f"{_source('services', sources)}: services: depends_on has a cycle; "
                      f"cannot order {', '.join(sorted(pending))}")
    return errors


def _known_keys(schema: dict) -> set[str]:
    keys = set(schema.get("properties", {}))
    ref = schema.get("$ref", "")
    if ref.startswith("#/$defs/"):
        keys |= _known_keys(_schema()["$defs"][ref.removeprefix("#/$defs/")])
    return keys


def _expected(schema: dict) -> str:
    """Human description of what a (leaf) subschema accepts: "integer >= 1", "one of a, b"."""
    if "enum" in schema:
        return "one of " + ", ".join("null" if v is None else str(v) for v in schema["enum"])
    types = schema.get("type", [])
    types = [types] if isinstance(types, str) else types
    text = " or ".join(_TYPE_NAMES[t] for t in types if t != "null")
    if "minLength" in schema:
        text = "non-empty " + text
    if "examples" in schema:
        text += f" like {schema['examples'][0]!r}"
    text += " and".join(f" {op} {schema[key]}" for key, op in (
        ("minimum", ">="), ("exclusiveMinimum", ">"), ("maximum", "<=")) if key in schema)
    if "items" in schema:
        text += f" of {_TYPE_NAMES[schema['items']['type']]}s"
    if schema.get("uniqueItems"):
        text += " without duplicates"
    return text + (" or null" if "null" in types else "")


def _show(value: Any) -> str:
    """A found value for an error line: short scalars as written, containers by kind."""
    if isinstance(value, (dict, list)) or value is None:
        return {dict: "a mapping", list: "a list"}.get(type(value), "null")
    text = str(value).lower() if isinstance(value, bool) else repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


# --- paths ---------------------------------------------------------------------------------

def _join(prefix: str, key: str) -> str:
    return f"{prefix}.{key}" if prefix else key


def _leaves(node: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """``(key path, value)`` of every leaf: non-mapping values and empty mappings."""
    if isinstance(node, dict) and node:
        for key, value in node.items():
            yield from _leaves(value, _join(prefix, str(key)))
    elif prefix:
        yield prefix, node


def _source(path: str, sources: dict[str, str]) -> str:
    """The layer a key came from (a file, ``env SWARM__..``, defaults): its own, else the one
    that set the block under it, else the one that set the list or block around it."""
    if path in sources:
        return sources[path]
    below = sorted(label for p, label in sources.items() if p.startswith(path + "."))
    if below:
        return next((s for s in below if s != DEFAULTS), below[0])
    parent = path.rpartition(".")[0]
    return _source(parent, sources) if parent else "config"
