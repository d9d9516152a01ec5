"""The command line and settings: help for every option, precedence of file < env < flag, clear errors."""

from __future__ import annotations

import gc
import re
import subprocess
import sys
from pathlib import Path

import pytest

from cdn.cli import SERVICES, _load, build_parser
from cdn.config import SettingsError, load_settings
from edge.settings import EdgeSettings
from tests.servers import ROOT


def run_cdn(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cdn", *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("service", sorted(SERVICES))
def test_help_lists_every_setting_of_each_service(service: str) -> None:
    settings_cls = _load(SERVICES[service][0])
    result = run_cdn(service, "--help")
    assert result.returncode == 0
    for name in settings_cls.model_fields:
        assert "--" + name.replace("_", "-") in result.stdout


def test_file_then_environment_then_flags(tmp_path: Path) -> None:
    config = tmp_path / "cdn.toml"
    config.write_text('[edge]\nport = 1111\nregion = "file"\nid = "from-file"\n')
    settings = load_settings(EdgeSettings, config, {"port": 3333}, {"CDN_EDGE_PORT": "2222", "CDN_EDGE_REGION": "env"})
    assert (settings.port, settings.region, settings.id) == (3333, "env", "from-file")


def test_list_settings_take_json_from_the_environment() -> None:
    settings = load_settings(EdgeSettings, None, {}, {"CDN_EDGE_ALLOWED_HOSTS": '["a.example", "b.example"]'})
    assert settings.allowed_hosts == ["a.example", "b.example"]


@pytest.mark.parametrize(("overrides", "named"), [
    ({"cache_size": 0}, "edge.cache_size"),
    ({"origin": "ftp://x"}, "edge.origin"),
    ({"heuristic_fraction": 2}, "edge.heuristic_fraction"),
    ({"id": "bad id"}, "edge.id"),
])
def test_invalid_settings_name_the_setting(overrides: dict, named: str) -> None:
    with pytest.raises(SettingsError, match=re.escape(named)):
        load_settings(EdgeSettings, None, overrides, {})


@pytest.mark.parametrize(("overrides", "shown"), [
    ({"redis": "redis://:s3cret@localhost:99999/0"}, " (got 'redis://:***@localhost:99999/0')"),
    ({"redis": "redis://user:s3cret@[::1/0"}, " (got 'redis://user:***@[::1/0')"),
    ({"redis": "redis://:s3cr/et@host:99999/0"}, " (got 'redis://:***@host:99999/0')"),  # a / in the password
    ({"redis": "redis+sentinel://:s3cret@h:1/m/x?sentinel_password=s3cr'et"},
     " (got 'redis+sentinel://:***@h:1/m/x?sentinel_password=***')"),
    ({"admin_token": ["s3cret"]}, " (got a value, not shown)"),
    ({"admin_tokne": "s3cret"}, ""),  # a misspelt setting: its name says enough
    ({"admin_token": "s3cret", "workers": 2, "server": "granian"}, ""),  # about the settings as a whole
])
def test_a_settings_error_shows_no_password_or_token(overrides: dict, shown: str) -> None:
    # Start-up errors end up in logs and terminals others read: what was wrong, not the secret.
    with pytest.raises(SettingsError) as caught:
        load_settings(EdgeSettings, None, overrides, {})
    message = str(caught.value)
    assert "s3cr" not in message
    assert message.endswith(shown) and ("(got" in message) == bool(shown), message


def test_unknown_setting_in_file_is_an_error(tmp_path: Path) -> None:
    config = tmp_path / "cdn.toml"
    config.write_text("[edge]\ncache_sise = 5\n")
    with pytest.raises(SettingsError, match="edge.cache_sise"):
        load_settings(EdgeSettings, config, {}, {})


def test_bad_config_file_is_reported(tmp_path: Path) -> None:
    config = tmp_path / "cdn.toml"
    config.write_text("[edge\n")
    result = run_cdn("edge", "--config", str(config))
    assert result.returncode == 2
    assert "config file" in result.stderr


def test_invalid_flag_value_stops_the_service_with_the_setting_named() -> None:
    result = run_cdn("edge", "--origin", "nonsense")
    assert result.returncode == 2
    assert "edge.origin" in result.stderr


def test_readme_documents_every_setting() -> None:
    readme = (ROOT / "README.md").read_text()
    for service, (settings_ref, _, _) in SERVICES.items():
        for name in _load(settings_ref).model_fields:
            assert f"`{name}`" in readme, f"README lacks {service} setting {name}"


def test_every_command_has_help() -> None:
    parser = build_parser()
    subcommands = parser._subparsers._group_actions[0].choices  # type: ignore[union-attr]
    assert {"edge", "origin", "purge-api", "router", "purge", "demo", "bench"} <= set(subcommands)


def test_serve_puts_what_start_up_made_out_of_the_collectors_sight(monkeypatch: pytest.MonkeyPatch) -> None:
    # A full garbage collection holds every request: it need not visit modules, classes and the app again.
    import uvicorn

    from cdn import cli

    seen = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **options: seen.append(gc.get_freeze_count()))
    try:
        settings = load_settings(EdgeSettings, None, {}, {})
        assert cli.serve("edge", lambda s: None, settings, app=object()) == 0
        assert seen and seen[0] > 10_000
    finally:
        gc.unfreeze()
