"""Config loading: layers, env overlay, secrets, schema errors, provenance, diff, wire format."""
from __future__ import annotations

import json
import os
import textwrap
from importlib.resources import files
from pathlib import Path

import msgpack
import pytest
import yaml
from jsonschema import Draft202012Validator

from system.config import (
    Config,
    ConfigDiff,
    diff,
    file_fingerprint,
    find_config_file,
    load_config,
)
from system.errors import ConfigError

SECRET = "s3cr3t-Value-42"


def write(path: Path, text: str) -> Path:
    path.write_text(textwrap.dedent(text))
    return path


def load(tmp_path: Path, text: str | None = None, env: dict | None = None) -> Config:
    """Load with a user file holding ``text`` (if given), in tmp_path, with only ``env``."""
    cli = str(write(tmp_path / "user.yaml", text)) if text is not None else None
    return load_config(cli, env or {}, cwd=tmp_path)


def errors_of(tmp_path: Path, text: str | None = None, env: dict | None = None) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load(tmp_path, text, env)
    return info.value.errors


# --- defaults and schema -------------------------------------------------------------------

def test_packaged_defaults_validate_against_the_schema():
    schema = json.loads(files("config").joinpath("schema.json").read_text())
    Draft202012Validator.check_schema(schema)
    defaults = yaml.safe_load(files("config").joinpath("swarm.yaml").read_text())
    assert list(Draft202012Validator(schema).iter_errors(defaults)) == []


def test_defaults_only_load_when_no_file_is_found(tmp_path):
    cfg = load(tmp_path)
    assert cfg.file is None
    assert cfg.get("system.admin_port") == 19500
    assert cfg.get("system.bind") == "127.0.0.1"
    assert cfg.get("services.queue.synchronous") == "NORMAL"
    assert cfg.get("agents.names")[:2] == ["Agent-1", "Agent-2"]
    assert set(cfg.sources.values()) == {"defaults"}


def test_every_schema_key_has_a_description():
    schema = json.loads(files("config").joinpath("schema.json").read_text())
    missing = []

    def walk(node: dict, where: str) -> None:
        for key, sub in node.get("properties", {}).items():
            if "description" not in sub:
                missing.append(f"{where}.{key}")
            walk(sub, f"{where}.{key}")
        for name in ("items", "additionalProperties"):
            if isinstance(node.get(name), dict):
                walk(node[name], f"{where}.{name}")

    walk(schema, "")
    for name, sub in schema["$defs"].items():
        walk(sub, f"$defs.{name}")
    assert missing == []


def test_unknown_key_is_an_error_but_service_options_are_free_form(tmp_path):
    cfg = load(tmp_path, """
        services:
          queue:
            options: {anything: [1, 2], nested: {deep: true}}
    """)
    assert cfg.get("services.queue.options.nested.deep") is True


# --- layering and env overlay --------------------------------------------------------------

def test_layers_apply_defaults_then_file_then_env(tmp_path):
    cfg = load(tmp_path, """
        system: {log_level: debug, admin_port: 20000}
        supervision: {backoff: {max_s: 10}}
    """, env={"SWARM__SYSTEM__ADMIN_PORT": "20001"})
    user = str(tmp_path / "user.yaml")
    assert cfg.get("system.log_level") == "debug"
    assert cfg.get("system.admin_port") == 20001
    assert cfg.get("supervision.backoff.max_s") == 10
    assert cfg.get("supervision.backoff.initial_s") == 0.05  # deep merge keeps siblings
    assert cfg.sources["system.log_level"] == user
    assert cfg.sources["system.admin_port"] == "env SWARM__SYSTEM__ADMIN_PORT"
    assert cfg.sources["system.bind"] == "defaults"


def test_lists_replace_instead_of_merging(tmp_path):
    cfg = load(tmp_path, "agents: {names: [Solo]}")
    assert cfg.get("agents.names") == ["Solo"]


@pytest.mark.parametrize(("raw", "expected"), [
    ("500", 500),
    ("true", True),
    ("false", False),
    ("0.25", 0.25),
    ("null", None),
    ("hello world", "hello world"),
    ("OFF", "OFF"),              # YAML 1.1 would make this False
    ("2024-01-02", "2024-01-02"),  # no date objects: must stay msgpack-able
    ("'500'", "500"),            # quoting forces a string
    ("[a, b]", ["a", "b"]),
    ("", ""),
    ("a #b", "a #b"),            # no comment stripping
    ("{a: 1}", "{a: 1}"),        # mappings stay strings
    ("@oops", "@oops"),          # does not parse: stays a string
])
def test_env_values_are_parsed_as_yaml_scalars(tmp_path, raw, expected):
    cfg = load(tmp_path, env={"SWARM__SERVICES__QUEUE__OPTIONS__VALUE": raw})
    assert cfg.get("services.queue.options.value") == expected


def test_env_key_parts_are_lower_cased_into_nested_keys(tmp_path):
    cfg = load(tmp_path, env={"SWARM__SERVICES__QUEUE__BATCH_MAX": "42", "SWARM_CONFIG": ""})
    assert cfg.get("services.queue.batch_max") == 42
    assert cfg.sources["services.queue.batch_max"] == "env SWARM__SERVICES__QUEUE__BATCH_MAX"


def test_malformed_env_name_is_an_error(tmp_path):
    assert errors_of(tmp_path, env={"SWARM__SYSTEM____BIND": "x"}) == [
        "env SWARM__SYSTEM____BIND: malformed name, expected SWARM__SECTION__KEY"]


# --- file resolution -----------------------------------------------------------------------

def test_file_resolution_prefers_cli_then_env_then_local_file(tmp_path):
    cli, envf, local = (write(tmp_path / n, "{}") for n in ("cli.yaml", "env.yaml", "swarm.yaml"))
    env = {"SWARM_CONFIG": str(envf)}
    assert find_config_file(str(cli), env, cwd=tmp_path) == cli
    assert find_config_file(None, env, cwd=tmp_path) == envf
    assert find_config_file(None, {}, cwd=tmp_path) == local
    local.unlink()
    assert find_config_file(None, {}, cwd=tmp_path) is None


def test_relative_config_paths_resolve_against_cwd(tmp_path):
    write(tmp_path / "site.yaml", "system: {log_level: error}")
    cfg = load_config(None, {"SWARM_CONFIG": "site.yaml"}, cwd=tmp_path)
    assert cfg.file == tmp_path / "site.yaml"
    assert cfg.get("system.log_level") == "error"


def test_missing_cli_file_is_an_error_even_if_others_exist(tmp_path):
    write(tmp_path / "swarm.yaml", "{}")
    with pytest.raises(ConfigError) as info:
        find_config_file("nope.yaml", {}, cwd=tmp_path)
    assert info.value.errors == ["config file not found: nope.yaml"]


def test_missing_swarm_config_file_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match=r"config file not found: /no/such\.yaml"):
        load_config(None, {"SWARM_CONFIG": "/no/such.yaml"}, cwd=tmp_path)


# --- YAML problems -------------------------------------------------------------------------

def test_yaml_syntax_error_names_file_line_and_column(tmp_path):
    errors = errors_of(tmp_path, "system:\n  bind: [127.0.0.1\n  log_level: info\n")
    assert len(errors) == 1
    assert errors[0].startswith(f"{tmp_path / 'user.yaml'}: YAML error at line 3, column ")


def test_duplicate_yaml_key_is_an_error_with_its_line(tmp_path):
    errors = errors_of(tmp_path, "system:\n  bind: a\n  bind: b\n")
    assert errors == [(f"{tmp_path / 'user.yaml'}: YAML error at line 3, column 3: "
                       "duplicate key: 'bind'")]


@pytest.mark.parametrize("text", ["- a\n- b\n", "just a string\n", "42\n"])
def test_user_file_must_be_a_mapping(tmp_path, text):
    errors = errors_of(tmp_path, text)
    assert len(errors) == 1
    assert errors[0].startswith(f"{tmp_path / 'user.yaml'}: expected a mapping of sections")


def test_empty_user_file_means_no_overrides(tmp_path):
    cfg = load(tmp_path, "# nothing yet\n")
    assert cfg.file == tmp_path / "user.yaml"
    assert cfg.get("system.admin_port") == 19500


# --- schema errors -------------------------------------------------------------------------

def test_unknown_key_names_parent_path_and_file(tmp_path):
    assert errors_of(tmp_path, "services: {queue: {batchmax: 5}}") == [
        f"{tmp_path / 'user.yaml'}: services.queue: unknown key 'batchmax'"]


def test_unknown_top_level_section(tmp_path):
    assert errors_of(tmp_path, "sytem: {}") == [
        f"{tmp_path / 'user.yaml'}: (top level): unknown key 'sytem'"]


def test_wrong_type_says_expected_and_found(tmp_path):
    assert errors_of(tmp_path, "services: {queue: {batch_max: lots}}") == [
        f"{tmp_path / 'user.yaml'}: services.queue.batch_max: expected integer >= 1, found 'lots'"]


def test_enum_violation_lists_allowed_values(tmp_path):
    assert errors_of(tmp_path, "supervision: {core: {strategy: one_for_some}}") == [
        (f"{tmp_path / 'user.yaml'}: supervision.core.strategy: "
         "expected one of one_for_one, one_for_all, rest_for_one, found 'one_for_some'")]


def test_out_of_range_value(tmp_path):
    assert errors_of(tmp_path, "system: {admin_port: 70000}") == [
        (f"{tmp_path / 'user.yaml'}: system.admin_port: "
         "expected integer >= 1 and <= 65535, found 70000")]


def test_user_service_without_actor_is_an_error(tmp_path):
    assert errors_of(tmp_path, "services: {gizmo: {enabled: true}}") == [
        f"{tmp_path / 'user.yaml'}: services.gizmo: missing required key 'actor'"]


def test_error_from_env_overlay_is_attributed_to_the_variable(tmp_path):
    assert errors_of(tmp_path, env={"SWARM__HEALTH__TIMEOUT_S": "soon"}) == [
        "env SWARM__HEALTH__TIMEOUT_S: health.timeout_s: expected number > 0, found 'soon'"]


def test_yaml_1_1_booleans_are_not_booleans(tmp_path):
    cfg = load(tmp_path, "services: {queue: {synchronous: OFF}}")
    assert cfg.get("services.queue.synchronous") == "OFF"
    assert errors_of(tmp_path, "services: {queue: {enabled: yes}}") == [
        f"{tmp_path / 'user.yaml'}: services.queue.enabled: expected boolean, found 'yes'"]


def test_all_errors_are_reported_together(tmp_path):
    errors = errors_of(tmp_path, """
        system: {log_level: loud, admin_port: 0}
        services:
          queue: {batchmax: 1}
          gizmo: {depends_on: [queue]}
          Bad-Name: {actor: "a:B"}
    """, env={"SWARM__HEALTH__POLL_INTERVAL_S": "-1"})
    user = tmp_path / "user.yaml"
    assert errors == [
        ("env SWARM__HEALTH__POLL_INTERVAL_S: health.poll_interval_s: "
         "expected number > 0, found -1"),
        (f"{user}: services: invalid name 'Bad-Name': "
         "expected lower-case letters, digits and _, starting with a letter"),
        f"{user}: services.gizmo: missing required key 'actor'",
        f"{user}: services.queue: unknown key 'batchmax'",
        f"{user}: system.admin_port: expected integer >= 1 and <= 65535, found 0",
        f"{user}: system.log_level: expected one of debug, info, warning, error, found 'loud'",
    ]


def test_list_errors_name_the_duplicate_and_the_bad_item(tmp_path):
    assert errors_of(tmp_path, "agents: {names: [A, A, ../x]}") == [
        f"{tmp_path / 'user.yaml'}: agents.names: expected no duplicates, found 'A' more than once",
        f"{tmp_path / 'user.yaml'}: agents.names.2: expected string like 'Agent-1', found '../x'"]


def test_yaml_anchors_and_merge_keys_work(tmp_path):
    cfg = load(tmp_path, """
        services:
          a: &base {actor: "m:A", max_rss_mb: 64}
          b: {<<: *base, enabled: false}
    """)
    assert cfg.get("services.b.max_rss_mb") == 64
    assert cfg.get("services.b.enabled") is False


def test_depends_on_must_name_known_services_without_cycles(tmp_path):
    errors = errors_of(tmp_path, """
        services:
          a: {actor: "m:A", depends_on: [b, ghost]}
          b: {actor: "m:B", depends_on: [a]}
    """)
    user = tmp_path / "user.yaml"
    assert errors == [f"{user}: services.a.depends_on: unknown service 'ghost'",
                      f"{user}: services: depends_on has a cycle; cannot order a, b"]


# --- secrets -------------------------------------------------------------------------------

SERVICE_WITH_TOKEN = """
    services:
      chat:
        actor: "actors.chat:Chat"
        enabled: {enabled}
        options: {{token: "{ref}"}}
"""


def secret_config(tmp_path: Path, ref: str, env: dict | None = None, enabled: bool = True):
    text = SERVICE_WITH_TOKEN.format(ref=ref, enabled=str(enabled).lower())
    return load(tmp_path, text, env)


def test_env_secret_is_resolved_and_recorded(tmp_path):
    cfg = secret_config(tmp_path, "${env:CHAT_TOKEN}", {"CHAT_TOKEN": SECRET})
    assert cfg.get("services.chat.options.token") == SECRET
    assert cfg.secret_paths == {"services.chat.options.token"}
    assert cfg.secret_values == {SECRET}


def test_file_secret_strips_one_trailing_newline_and_is_relative_to_cwd(tmp_path):
    (tmp_path / "token.txt").write_text(SECRET + "\n\n")
    cfg = secret_config(tmp_path, "${file:token.txt}")
    assert cfg.get("services.chat.options.token") == SECRET + "\n"


def test_file_secret_expands_home(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "tok").write_text(SECRET + "\n")
    cfg = secret_config(tmp_path, "${file:~/tok}")
    assert cfg.get("services.chat.options.token") == SECRET


def test_secret_reference_in_env_overlay_is_resolved(tmp_path):
    cfg = load(tmp_path, env={"SWARM__SERVICES__QUEUE__OPTIONS__KEY": "${env:K}", "K": SECRET})
    assert cfg.get("services.queue.options.key") == SECRET
    assert "services.queue.options.key" in cfg.secret_paths


@pytest.mark.parametrize(("ref", "env", "problem"), [
    ("${env:CHAT_TOKEN}", {}, "environment variable is not set"),
    ("${env:CHAT_TOKEN}", {"CHAT_TOKEN": ""}, "environment variable is empty"),
    ("${file:missing.txt}", {}, "cannot read file: No such file or directory"),
])
def test_unresolvable_secret_under_enabled_service_names_key_and_reference(
        tmp_path, ref, env, problem):
    with pytest.raises(ConfigError) as info:
        secret_config(tmp_path, ref, env)
    assert info.value.errors == [
        f"{tmp_path / 'user.yaml'}: services.chat.options.token: secret {ref}: {problem}"]


def test_unresolvable_secret_under_disabled_service_is_left_alone(tmp_path):
    cfg = secret_config(tmp_path, "${env:CHAT_TOKEN}", enabled=False)
    assert cfg.get("services.chat.options.token") == "${env:CHAT_TOKEN}"
    assert cfg.secret_paths == set()


def test_unresolvable_secret_outside_services_is_an_error(tmp_path):
    errors = errors_of(tmp_path, env={"SWARM__SYSTEM__BIND": "${env:BIND_ADDR}"})
    assert errors == [("env SWARM__SYSTEM__BIND: system.bind: secret ${env:BIND_ADDR}: "
                       "environment variable is not set")]


def test_secret_value_never_appears_in_redacted_describe_or_repr(tmp_path):
    cfg = secret_config(tmp_path, "${env:CHAT_TOKEN}", {"CHAT_TOKEN": SECRET})
    assert cfg.redacted()["services"]["chat"]["options"]["token"] == "***"
    assert SECRET not in json.dumps(cfg.redacted())
    assert ("services.chat.options.token", "***", str(tmp_path / "user.yaml")) in cfg.describe()
    assert SECRET not in repr(cfg.describe())
    assert SECRET not in repr(cfg)
    assert cfg.get("services.chat.options.token") == SECRET  # data itself is untouched


def test_secret_value_never_appears_in_error_messages(tmp_path):
    env = {"PORT": SECRET, "SWARM__SYSTEM__ADMIN_PORT": "${env:PORT}", "SWARM__SYSTEM__X": SECRET}
    with pytest.raises(ConfigError) as info:
        load(tmp_path, env=env)
    text = "\n".join(info.value.errors) + str(info.value)
    assert "system.admin_port: expected integer >= 1 and <= 65535, found a secret (hidden)" in text
    assert SECRET not in text


def test_secret_in_a_list_is_redacted(tmp_path):
    cfg = load(tmp_path, "services: {queue: {options: {keys: [plain, '${env:K}']}}}", {"K": SECRET})
    assert cfg.secret_paths == {"services.queue.options.keys.1"}
    assert cfg.redacted()["services"]["queue"]["options"]["keys"] == ["plain", "***"]


# --- provenance, paths, services -----------------------------------------------------------

def test_describe_lists_every_leaf_with_its_source(tmp_path):
    cfg = load(tmp_path, "health: {timeout_s: 9}", env={"SWARM__AGENTS__NAMES": "[X, Y]"})
    rows = {path: (value, source) for path, value, source in cfg.describe()}
    assert rows["health.timeout_s"] == (9, str(tmp_path / "user.yaml"))
    assert rows["agents.names"] == (["X", "Y"], "env SWARM__AGENTS__NAMES")
    assert rows["health.poll_interval_s"] == (1.0, "defaults")
    assert rows["services.queue.options"] == ({}, "defaults")
    assert set(rows) == set(cfg.sources)


def test_relative_data_paths_become_absolute_against_cwd(tmp_path):
    cfg = load(tmp_path, "system: {data_dir: var/data}\nagents: {workspace_root: /abs/ws}")
    assert cfg.get("system.data_dir") == str(tmp_path / "var" / "data")
    assert cfg.get("agents.workspace_root") == "/abs/ws"
    assert load(tmp_path).get("agents.workspace_root") == str(tmp_path / "agent_workspaces")


def test_services_fill_generic_defaults_for_user_services(tmp_path):
    cfg = load(tmp_path, "services: {gizmo: {actor: 'pkg.gizmo:Gizmo', enabled: false}}")
    gizmo = cfg.services()["gizmo"]
    assert gizmo == {"actor": "pkg.gizmo:Gizmo", "enabled": False, "restart": "permanent",
                     "depends_on": [], "max_rss_mb": None, "shutdown_timeout_s": None,
                     "log_level": None, "options": {}}
    assert cfg.sources["services.gizmo.restart"] == "defaults"
    assert set(cfg.services()) == {"queue", "gas", "discord", "twitch", "gizmo"}


# --- diff, wire, fingerprint ---------------------------------------------------------------

def test_diff_of_identical_configs_is_empty(tmp_path):
    assert diff(load(tmp_path), load(tmp_path)) == ConfigDiff()
    assert diff(load(tmp_path), load(tmp_path)).empty


def test_diff_reports_added_removed_and_changed_services(tmp_path):
    old = load(tmp_path, """
        services:
          a: {actor: "m:A"}
          b: {actor: "m:B", options: {x: 1}}
          c: {actor: "m:C", enabled: false}
    """)
    new = load(tmp_path, """
        services:
          queue: {enabled: false}
          b: {actor: "m:B", options: {x: 2}, max_rss_mb: 100}
          c: {actor: "m:C"}
          d: {actor: "m:D"}
    """)
    d = diff(old, new)
    assert d.added_services == {"c", "d"}
    assert d.removed_services == {"a", "queue"}
    assert d.changed_services == {"b": {"options", "max_rss_mb"}}
    assert not (d.system_changed or d.supervision_changed or d.health_changed)


def test_diff_reports_system_supervision_health_and_agents(tmp_path):
    old = load(tmp_path)
    new = load(tmp_path, env={"SWARM__SYSTEM__LOG_LEVEL": "debug",
                              "SWARM__SUPERVISION__ROOT__MAX_RESTARTS": "1",
                              "SWARM__HEALTH__TIMEOUT_S": "4",
                              "SWARM__AGENTS__NAMES": "[A]"})
    d = diff(old, new)
    assert d.system_changed == {"system.log_level"}
    assert d.supervision_changed and d.health_changed and d.agents_changed
    assert not (d.added_services or d.removed_services or d.changed_services)


def test_wire_round_trip_through_msgpack(tmp_path):
    cfg = secret_config(tmp_path, "${env:CHAT_TOKEN}", {"CHAT_TOKEN": SECRET})
    back = Config.from_wire(msgpack.unpackb(msgpack.packb(cfg.to_wire())))
    assert back.to_wire() == cfg.to_wire()
    assert back.file == cfg.file and back.data == cfg.data
    assert back.secret_values == {SECRET}
    assert back.redacted() == cfg.redacted()
    assert diff(cfg, back).empty


def test_from_wire_rejects_unknown_version():
    with pytest.raises(ConfigError):
        Config.from_wire({"v": 99})


def test_fingerprint_changes_when_content_changes(tmp_path):
    path = write(tmp_path / "swarm.yaml", "system: {log_level: info}\n")
    first = file_fingerprint(path)
    path.write_text("system: {log_level: warning}\n")
    os.utime(path, (first[0] + 5, first[0] + 5))
    second = file_fingerprint(path)
    assert second[1] != first[1] and second[0] != first[0]
    assert file_fingerprint(path) == second


def test_digest_tracks_file_content_and_env_overlay(tmp_path):
    base = load(tmp_path, "{}").digest
    assert load(tmp_path, "{}").digest == base
    assert load(tmp_path, "system: {log_level: info}").digest != base
    assert load(tmp_path, "{}", env={"SWARM__SYSTEM__LOG_LEVEL": "info"}).digest != base
    assert load(tmp_path, "{}", env={"UNRELATED": "1"}).digest == base
