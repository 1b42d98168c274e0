"""Settings: the blog's .env works, bad values fail with one line naming the variable, secrets masked."""

from __future__ import annotations

import pytest

from callscribe.cli import main
from callscribe.config import ConfigError, EngineChoice, load_settings


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (
        "GLADIA_API_KEY",
        "HTTP_PORT",
        "ENGINE",
        "PUBLIC_URL",
        "TWILIO_AUTH_TOKEN",
        "TWIML_CONTINUE",
    ):
        monkeypatch.delenv(name, raising=False)


def test_defaults_need_no_key_and_pick_the_local_engine() -> None:
    s = load_settings(None)
    assert s.http_port == 5000 and s.resolved_engine is EngineChoice.LOCAL
    assert s.stream_track == "both_tracks"


def test_the_gladia_blog_env_file_just_works(tmp_path) -> None:
    env = tmp_path / ".env"
    env.write_text("GLADIA_API_KEY=gl-0123456789abcdef\n")
    s = load_settings(env)
    assert s.gladia_api_key is not None and s.resolved_engine is EngineChoice.GLADIA
    assert str(s.gladia_api_url) == "https://api.gladia.io"


@pytest.mark.parametrize(
    ("var", "value", "needle"),
    [
        ("HTTP_PORT", "abc", "HTTP_PORT"),
        ("HTTP_PORT", "70000", "HTTP_PORT"),
        ("ENGINE", "whisperx", "ENGINE"),
        ("TWIML_CONTINUE", "sing", "TWIML_CONTINUE"),
        ("PUBLIC_URL", "not a url", "PUBLIC_URL"),
    ],
)
def test_bad_configuration_fails_with_one_line(monkeypatch, var: str, value: str, needle: str) -> None:
    monkeypatch.setenv(var, value)
    with pytest.raises(ConfigError) as err:
        load_settings(None)
    assert str(err.value).startswith(needle) and "\n" not in str(err.value)


def test_cli_reports_bad_config_in_one_line(monkeypatch, capsys) -> None:
    monkeypatch.setenv("HTTP_PORT", "abc")
    assert main(["--env-file", "/nonexistent", "config"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("callscribe: configuration error: HTTP_PORT") and "\n" not in err


def test_config_masks_secrets(monkeypatch, capsys) -> None:
    monkeypatch.setenv("GLADIA_API_KEY", "gl-supersecretvalue-1234")
    monkeypatch.setenv("TWILIO_AUTH_TOKEN", "tok-supersecretvalue-9876")
    assert main(["--env-file", "/nonexistent", "config"]) == 0
    out = capsys.readouterr().out
    assert "supersecret" not in out and "GLADIA_API_KEY" in out and "(set)" in out
    assert "gladia" in out.split("ENGINE (resolved)")[1]


def test_twiml_command_prints_twiml(monkeypatch, capsys) -> None:
    assert main(["--env-file", "/nonexistent", "twiml", "--url", "https://abc.ngrok.app"]) == 0
    out = capsys.readouterr().out
    assert 'url="wss://abc.ngrok.app/media"' in out and "<Pause" in out
    assert main(["--env-file", "/nonexistent", "twiml"]) == 2
