"""Gas templates are checked when the config is loaded (``x-placeholders`` in the schema): an
unknown placeholder is a config error by key path for ``config check``, ``start`` and
``reload``, and a rejected reload keeps the running config."""
from __future__ import annotations

import json
import time
from importlib.resources import files

import pytest
import yaml

from actors.gas.service import template_values
from system import protocol
from system.config import load_config, template_problems
from system.errors import ConfigError
from tests.conftest import deep_merge

KNOWN = "known: agent, next_agent, task, progress, learnings"
GAS = {"enabled": True, "poll_interval_s": 0.2}


def write_config(swarm, overrides: dict) -> None:
    """The swarm's config file as the operator edits it (not validated on the way)."""
    swarm.config_path.write_text(yaml.safe_dump(deep_merge(swarm.base, overrides)))


def test_an_unknown_placeholder_is_a_load_error_naming_the_key_and_the_known_ones(tmp_path):
    path = tmp_path / "swarm.yaml"
    path.write_text(yaml.safe_dump({"services": {"gas": {"templates": {
        "ready": "GET READY {foo}", "go": "GO {next_agent} {agent.name}",
        "nudge": "NUDGE {progress:.1f}"}}}}))
    with pytest.raises(ConfigError) as info:
        load_config(str(path), {}, cwd=tmp_path)
    assert info.value.errors == [
        f"{path}: services.gas.templates.go: {{agent.name}}: only plain names",
        (f"{path}: services.gas.templates.nudge: not a valid template: Unknown format code 'f' "
         "for object of type 'str'"),
        f"{path}: services.gas.templates.ready: unknown placeholder {{foo}}; {KNOWN}"]


def test_the_env_overlay_is_checked_too():
    with pytest.raises(ConfigError) as info:
        load_config(None, {"SWARM__SERVICES__GAS__TEMPLATES__PREPARE": "{"})
    assert info.value.errors == [
        "env SWARM__SERVICES__GAS__TEMPLATES__PREPARE: services.gas.templates.prepare: "
        + "not a valid template: Single '{' encountered in format string"]


@pytest.mark.parametrize("text, problems", [
    ("{agent} {next_agent} {task} {progress}% {learnings} {{braces}} {agent!r:>8}", []),
    ("{}", ["{} needs a placeholder name"]),
    ("{0}", ["{0}: only plain names"]),
    ("{agent[0]}", ["{agent[0]}: only plain names"]),
    ("{agent:{width}}", [f"unknown placeholder {{width}}; {KNOWN}"]),
    ("}", ["not a valid template: Single '}' encountered in format string"]),
])
def test_template_problems(text, problems):
    names = ["agent", "next_agent", "task", "progress", "learnings"]
    assert template_problems(text, names) == problems


def test_the_schema_allows_exactly_the_placeholders_the_service_fills():
    schema = json.loads(files("config").joinpath("schema.json").read_text())
    allowed = schema["$defs"]["gas_service"]["properties"]["templates"]["x-placeholders"]
    row = {"agent": "A", "next_agent": "B", "task": "T", "progress": 76.0}
    assert sorted(allowed) == sorted(template_values(row, []))
    packaged = load_config(None, {}).get("services.gas.templates")
    for text in packaged.values():
        text.format(**template_values(row, [{"title": "t", "content": "c"}]))


def test_start_refuses_a_config_with_an_unknown_placeholder(make_swarm):
    swarm = make_swarm()
    write_config(swarm, {"services": {"gas": {**GAS, "templates": {"go": "GO {nxt}"}}}})
    proc = swarm.cli("config", "check", check=False)
    assert proc.returncode == 2
    assert f"services.gas.templates.go: unknown placeholder {{nxt}}; {KNOWN}" in proc.stderr
    proc = swarm.cli("start", "-d", "--wait", "10", check=False)
    assert proc.returncode == 2 and "services.gas.templates.go" in proc.stderr
    assert "Traceback" not in proc.stderr and not swarm.processes()


def test_a_reload_with_an_unknown_placeholder_is_rejected_and_the_running_config_kept(
        make_swarm):
    swarm = make_swarm({"services": {"queue": {"enabled": True}, "gas": GAS},
                        "agents": {"names": ["Agent-1", "Agent-2"]}})
    swarm.start()
    pid = swarm.service("gas")["pid"]
    write_config(swarm, {"services": {"queue": {"enabled": True}, "gas": {**GAS, "templates": {
        "prepare": "PREP {foo}"}}}, "agents": {"names": ["Agent-1", "Agent-2"]}})
    proc = swarm.cli("reload", check=False)
    assert proc.returncode == 2
    assert f"services.gas.templates.prepare: unknown placeholder {{foo}}; {KNOWN}" in proc.stderr
    time.sleep(2.5)  # the admin's file watcher sees the edit too, and rejects it as well
    gas = swarm.service("gas")
    assert gas["state"] == "running" and gas["pid"] == pid
    # the CLI refuses the broken file for every command; ask the running swarm directly
    swarm.ask("gas", protocol.GAS_PROGRESS, {"agent": "Agent-1", "progress": 80, "task": "T1"})
    inbox = swarm.dir / "agents" / "Agent-2" / "inbox"
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not list(inbox.glob("*.md")):
        time.sleep(0.05)
    [text] = [p.read_text() for p in inbox.glob("*.md")]
    assert "PREPARE: Agent-1 is at 80% on T1" in text  # the packaged template, still in force
