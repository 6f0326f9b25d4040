"""The one settings model: precedence per source, types, unknown names, masking, and docs/configuration.md against it.

Pure logic and the Typer app in-process: no subprocess, no service.
"""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from kerbside.cli import app
from kerbside.core import settings
from kerbside.core.settings import Config, ConfigError, child_env, env_name, load

DOC = Path(__file__).resolve().parents[1] / "docs" / "configuration.md"
NO_FILE = {"KERBSIDE_CONFIG": ""}


def _keys() -> list[tuple[str, str]]:
    cfg = Config()
    return [(s, f.name) for s in settings.SECTIONS for f in dataclasses.fields(getattr(cfg, s))]


# --- precedence: default < file < environment < flag ------------------------------------------------------


@pytest.mark.parametrize(("file", "env", "flag", "expected", "source"), [
    (False, False, False, "kerbside", None),
    (True, False, False, "from-file", "[influx] db"),
    (True, True, False, "from-env", "environment KERBSIDE_INFLUX_DB"),
    (False, True, False, "from-env", "environment KERBSIDE_INFLUX_DB"),
    (True, True, True, "from-flag", "flag for influx.db"),
    (True, False, True, "from-flag", "flag for influx.db"),
    (False, False, True, "from-flag", "flag for influx.db"),
])
def test_each_source_overrides_the_ones_before(tmp_path: Path, file: bool, env: bool, flag: bool, expected: str,
                                               source: str | None) -> None:
    f = tmp_path / "k.toml"
    f.write_text('[influx]\ndb = "from-file"\n' if file else "")
    cfg = load(f, env={"KERBSIDE_INFLUX_DB": "from-env"} if env else {},
               overrides={"influx.db": "from-flag" if flag else None})
    assert cfg.influx.db == expected
    assert (cfg.sources.get("influx.db") or "").endswith(source or "") and (source is None) == ("influx.db" not in cfg.sources)
    assert cfg.influx.url == "http://127.0.0.1:8086"  # untouched keys keep their default


def test_precedence_is_per_key(tmp_path: Path) -> None:
    f = tmp_path / "k.toml"
    f.write_text('[batch]\nlines = 100\ninterval_s = 2\n[node]\nperiod = 30\n')
    cfg = load(f, env={"KERBSIDE_BATCH_LINES": "200"}, overrides={"node.period": 15})
    assert (cfg.batch.lines, cfg.batch.interval_s, cfg.node.period, cfg.node.sample) == (200, 2.0, 15, 10)


def test_the_file_is_found_by_flag_then_environment_then_search_path(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    flag, env, searched = (tmp_path / n for n in ("flag.toml", "env.toml", "searched.toml"))
    for p in (flag, env, searched):
        p.write_text(f'[influx]\ndb = "{p.stem}"\n')
    monkeypatch.setattr(settings, "SEARCH_PATH", (tmp_path / "absent.toml", searched))
    assert load(flag, env={"KERBSIDE_CONFIG": str(env)}).influx.db == "flag"
    assert load(None, env={"KERBSIDE_CONFIG": str(env)}).influx.db == "env"
    assert load(None, env={}).influx.db == "searched"
    assert load(None, env={}).file == searched
    empty = load(None, env=NO_FILE)  # set but empty: no file at all, not even from the search path
    assert (empty.influx.db, empty.file) == ("kerbside", None)


def test_relative_paths_follow_the_file_in_a_file_and_the_working_directory_elsewhere(tmp_path: Path) -> None:
    f = tmp_path / "depot" / "k.toml"
    f.parent.mkdir()
    f.write_text('[node]\nca = "ca.pem"\n[spool]\ndir = "/abs/spool"\n[registry]\npath = "~/reg.json"\n')
    cfg = load(f, env={"KERBSIDE_FIRMWARE_IMAGE": "fw.bin"})
    assert cfg.node.ca == str(f.parent.resolve() / "ca.pem")
    assert cfg.spool.dir == "/abs/spool"
    assert cfg.registry.path == str(Path("~/reg.json").expanduser())
    assert cfg.firmware.image == "fw.bin"


# --- types ---------------------------------------------------------------------------------------------------


def test_environment_strings_become_the_keys_types() -> None:
    cfg = load(None, env={**NO_FILE, "KERBSIDE_BATCH_LINES": "2000", "KERBSIDE_BATCH_INTERVAL_S": "0.25",
                          "KERBSIDE_INFLUX_GZIP": "off", "KERBSIDE_LOG_JSON": "yes",
                          "KERBSIDE_BROKER_HOSTS": "mqtt.city.example, 10.0.0.5", "KERBSIDE_NODE_NTP": ""})
    assert (cfg.batch.lines, cfg.batch.interval_s, cfg.influx.gzip, cfg.log.json) == (2000, 0.25, False, True)
    assert cfg.broker.hosts == ["mqtt.city.example", "10.0.0.5"] and cfg.node.ntp == []


@pytest.mark.parametrize(("env", "message"), [
    ({"KERBSIDE_BATCH_LINES": "2k"}, "environment KERBSIDE_BATCH_LINES: expected an integer, got '2k'"),
    ({"KERBSIDE_BATCH_LINGER_S": "fast"}, "environment KERBSIDE_BATCH_LINGER_S: expected a number, got 'fast'"),
    ({"KERBSIDE_INFLUX_GZIP": "maybe"}, "environment KERBSIDE_INFLUX_GZIP: expected true/false, got 'maybe'"),
])
def test_environment_type_errors_name_the_variable(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        load(None, env={**NO_FILE, **env})


@pytest.mark.parametrize(("text", "message"), [
    ('[batch]\nlines = "many"', "[batch] lines: expected an integer, got 'many'"),
    ("[influx]\ngzip = 1", "[influx] gzip: expected true or false, got 1"),
    ("[http]\nhost = 80", "[http] host: expected a string, got 80"),
    ('[broker]\nhosts = ["a", 3]', "[broker] hosts: expected a list of strings, got ['a', 3]"),
    ('[node]\nwifi = ["x"]', "[node] wifi: expected a list of [[tables]], got ['x']"),
    ('[[node.wifi]]\nssid = "a"\nkey = "b"', "[[node.wifi]] has ssid and psk, not key"),
    ("influx = 3", "'influx' must be a [section]"),
])
def test_file_type_errors_name_the_file_and_key(tmp_path: Path, text: str, message: str) -> None:
    f = tmp_path / "k.toml"
    f.write_text(text)
    with pytest.raises(ConfigError, match=re.escape(message)):
        load(f, env={})


def test_numbers_widen_to_floats_and_flags_may_be_paths(tmp_path: Path) -> None:
    f = tmp_path / "k.toml"
    f.write_text("[batch]\ninterval_s = 2\n")
    cfg = load(f, env={}, overrides={"spool.dir": tmp_path / "s", "broker.hosts": ["a", "b"]})
    assert cfg.batch.interval_s == 2.0 and isinstance(cfg.batch.interval_s, float)
    assert (cfg.spool.dir, cfg.broker.hosts) == (str(tmp_path / "s"), ["a", "b"])


# --- unknown and retired names ----------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "message"), [
    ("[influx]\nbdb = 1", "unknown key 'bdb' in [influx]; did you mean 'db'?"),
    ("[infux]\ndb = 1", "unknown section [infux]; did you mean 'influx'?"),
    ('[mqtt]\nhost = "x"', "the depot profile's mqtt.host is [node] broker_host now"),
])
def test_unknown_file_keys_are_errors(tmp_path: Path, text: str, message: str) -> None:
    f = tmp_path / "k.toml"
    f.write_text(text)
    with pytest.raises(ConfigError, match=re.escape(message)):
        load(f, env={})


@pytest.mark.parametrize(("name", "message"), [
    ("KERBSIDE_REGISTRY", "KERBSIDE_REGISTRY is not read any more: use KERBSIDE_REGISTRY_PATH"),
    ("KERBSIDE_PROFILE", "KERBSIDE_PROFILE is not read any more: use KERBSIDE_CONFIG"),
    ("KERBSIDE_WIFI_PSK", "use KERBSIDE_NODE_WIFI_PSK"),
    ("KERBSIDE_MQTT_PASWORD", "KERBSIDE_MQTT_PASWORD is not a setting (did you mean KERBSIDE_MQTT_PASSWORD?)"),
    ("KERBSIDE_REGISTY_PATH", "KERBSIDE_REGISTY_PATH is not a setting (did you mean KERBSIDE_REGISTRY_PATH?)"),
    ("KERBSIDE_INFLUX", "KERBSIDE_INFLUX is not a setting"),
    ("KERBSIDE_NODE_WIFI", "node.wifi is a list of [[node.wifi]] tables, set in the settings file"),
])
def test_environment_names_that_look_like_ours_are_errors(name: str, message: str) -> None:
    """The docs once said KERBSIDE_REGISTRY; a collector that silently ignored it accepted every device."""
    with pytest.raises(ConfigError, match=re.escape(message)):
        load(None, env={**NO_FILE, name: "/srv/kerbside/registry.json"})


def test_other_kerbside_variables_are_warnings_and_ours_are_quiet() -> None:
    cfg = load(None, env={**NO_FILE, "KERBSIDE_HOME": "/x", "KERBSIDE_BENCH_DIR": "/tmp", "PATH": "/bin"})
    assert cfg.warnings == ["environment KERBSIDE_HOME is not a kerbside setting and is ignored"]


def test_a_world_readable_file_with_secrets_is_a_warning(tmp_path: Path) -> None:
    f = tmp_path / "k.toml"
    f.write_text('[influx]\npassword = "hunter2"\n[[node.wifi]]\nssid = "a"\npsk = "abcdefgh"\n')
    f.chmod(0o640)
    assert load(f, env={}).warnings == []
    f.chmod(0o644)
    (warning,) = load(f, env={}).warnings
    assert "influx.password, node.wifi" in warning and "chmod 600" in warning
    f.write_text('[influx]\ndb = "x"\n')
    assert load(f, env={}).warnings == []  # nothing secret in it


# --- masking and handing settings on ------------------------------------------------------------------------


def test_secrets_are_masked_everywhere_they_are_shown(tmp_path: Path) -> None:
    f = tmp_path / "k.toml"
    f.write_text('[[node.wifi]]\nssid = "depot"\npsk = "wifi-key-1"\n')
    env = {"KERBSIDE_MQTT_PASSWORD": "hunter2", "KERBSIDE_INFLUX_PASSWORD": "pw-2", "KERBSIDE_INFLUX_TOKEN": "tok-3",
           "KERBSIDE_NODE_WIFI_PSK": "wifi-key-4"}
    cfg = load(f, env=env)
    shown = [json.dumps(cfg.as_dict()), cfg.to_toml(), cfg.to_toml(sources=True)]
    for text in shown:
        for secret in (*env.values(), "wifi-key-1"):
            assert secret not in text
    assert cfg.as_dict()["mqtt"]["password"] == "***" and cfg.as_dict()["node"]["wifi"] == [{"ssid": "depot", "psk": "***"}]
    assert cfg.as_dict(mask=False)["influx"]["token"] == "tok-3"
    assert cfg.as_dict()["influx"]["username"] == ""  # empty secrets stay visibly empty, others are not masked


def test_kerbside_config_prints_a_masked_settings_file_with_sources(tmp_path: Path) -> None:
    f = tmp_path / "k.toml"
    f.write_text('[influx]\ndb = "city"\n')
    r = CliRunner().invoke(app, ["config", "-c", str(f)], env={"KERBSIDE_INFLUX_PASSWORD": "hunter2",
                                                                "KERBSIDE_BATCH_LINES": "2000"})
    assert r.exit_code == 0, r.output
    assert "hunter2" not in r.output and f"# settings file: {f}" in r.output
    assert re.search(r'^db = "city" +# .*k\.toml \[influx\] db$', r.output, re.M)
    assert re.search(r"^lines = 2000 +# environment KERBSIDE_BATCH_LINES$", r.output, re.M)
    printed = tmp_path / "printed.toml"  # what it prints is a settings file kerbside reads back
    printed.write_text(r.output.replace('"***"', '""'))
    assert load(printed, env={}).batch.lines == 2000


def test_to_env_hands_exactly_these_settings_to_a_child(tmp_path: Path) -> None:
    cfg = Config()
    cfg.mqtt.password, cfg.batch.linger_s, cfg.broker.hosts, cfg.log.json = "s3cret", 0.25, ["a", "b"], True
    cfg.spool.dir = str(tmp_path / "spool")
    env = child_env(cfg, base={"PATH": "/bin", "KERBSIDE_CONFIG": "/etc/x.toml", "KERBSIDE_MQTT_URL": "mqtt://elsewhere:1"})
    assert env["PATH"] == "/bin" and env["KERBSIDE_CONFIG"] == "" and env["KERBSIDE_MQTT_URL"] == cfg.mqtt.url
    assert load(None, env=env) == cfg


def test_the_cli_reports_a_settings_error_once_without_a_traceback(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KERBSIDE_REGISTRY", "/srv/registry.json")
    r = CliRunner().invoke(app, ["registry", "list"])
    assert r.exit_code == 2
    assert r.output.strip() == ("error: environment KERBSIDE_REGISTRY is not read any more: use KERBSIDE_REGISTRY_PATH "
                                "(docs/configuration.md)")


# --- docs/configuration.md against the model ----------------------------------------------------------------


def _doc_rows() -> list[tuple[str, str, str]]:
    rows = re.findall(r"^\| `(\w+\.\w+)` \| (`KERBSIDE_\w+`|file only) \| `(.*?)` \|", DOC.read_text(), re.M)
    return [(key, env.strip("`"), default) for key, env, default in rows]


def test_the_doc_lists_every_key_once_with_its_environment_name_and_default() -> None:
    rows = _doc_rows()
    assert [k for k, _, _ in rows] == [f"{s}.{k}" for s, k in _keys()]  # all, once, in the model's order
    cfg = Config()
    for key, env, default in rows:
        section, name = key.split(".")
        field = next(f for f in dataclasses.fields(getattr(cfg, section)) if f.name == name)
        assert env == ("file only" if field.metadata.get("file_only") else env_name(section, name)), key
        assert default == settings._toml_value(getattr(getattr(cfg, section), name)), key


def test_the_doc_names_every_retired_variable() -> None:
    text = DOC.read_text()
    for old, new in settings.RETIRED.items():
        assert f"| `{old}` | `{new.split()[0]}`" in text


def _app_flags() -> set[tuple[str, str, str]]:
    """(command, flag, key) for every option whose help names the setting it sets: "(section.key...)"."""
    pattern = re.compile(rf"\(((?:{'|'.join(settings.SECTIONS)})\.\w+)[;)]")
    out = set()

    def walk(cmd: object, path: list[str]) -> None:
        for name, sub in getattr(cmd, "commands", {}).items():
            walk(sub, [*path, name])
        for p in getattr(cmd, "params", []):
            m = pattern.search(getattr(p, "help", None) or "")
            if m:
                out.add((" ".join(path), p.opts[0], m.group(1)))

    walk(typer.main.get_command(app), [])
    return out


def test_the_doc_flag_table_is_the_commands_flags() -> None:
    doc = set()
    for flag, key, commands in re.findall(r"^\| `(--[\w-]+)` \| `(\w+\.\w+)` \| ([\w ,-]+) \|$", DOC.read_text(), re.M):
        doc |= {(c.strip(), flag, key) for c in commands.split(",")}
    flags = _app_flags()
    assert flags == doc
    assert {k for _, _, k in flags} <= {f"{s}.{k}" for s, k in _keys()}


@pytest.mark.parametrize("doc", ["configuration.md", "provisioning.md"])
def test_the_settings_files_shown_in_the_docs_load(doc: str, tmp_path: Path) -> None:
    blocks = re.findall(r"```toml\n(.*?)```", (DOC.parent / doc).read_text(), re.S)
    assert blocks
    for i, text in enumerate(blocks):
        f = tmp_path / f"{i}.toml"
        f.write_text(text)
        load(f, env={})  # raises on any unknown key or wrong type



def test_every_kerbside_variable_any_doc_names_is_one_kerbside_reads() -> None:
    """The docs once told operators to set KERBSIDE_REGISTRY, which nothing read: the collector accepted every device."""
    root = DOC.parents[1]
    real = {env_name(s, k) for s, k in _keys()} | set(settings.NOT_SETTINGS)
    texts = [*root.glob("docs/**/*.md"), root / "README.md", *root.glob("collector/deploy/*")]
    seen = set()
    for path in texts:
        for para in path.read_text().split("\n\n"):
            for name in re.findall(r"KERBSIDE_[A-Z0-9_]*[A-Z0-9]", para):
                seen.add(name)
                if name in settings.RETIRED:  # only where the docs say it is no longer read
                    assert path == DOC or "refused" in para or "retired" in para, f"{path.name}: {para}"
                elif path == DOC and name in ("KERBSIDE_MQTT_PASWORD", "KERBSIDE_REGISTY_PATH"):
                    continue  # its examples of misspelt names that stop a command
                else:
                    assert name in real, f"{path.name} names {name}, which kerbside does not read: {para}"
    assert {"KERBSIDE_REGISTRY_PATH", "KERBSIDE_CONFIG", "KERBSIDE_NODE_WIFI_PSK"} <= seen
