"""Every setting is a flag of locate, eval and serve, generated from ``Configuration``'s fields."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from agent.cli import app
from agent.cli.settings import flag_name, with_settings
from agent.configuration import GROUPS, Configuration, settings_table
from tools.cli_runner import run_command

README = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
SETTINGS = [item.name for item in fields(Configuration)]


def help_text(*command: str) -> str:
    result = CliRunner().invoke(app, [*command, "--help"], env={"COLUMNS": "250", "TERM": "dumb"})
    assert result.exit_code == 0, result.output
    return result.output


@pytest.mark.parametrize("command", ["locate", "eval", "serve"])
def test_every_setting_is_a_flag_in_its_group(command):
    text = help_text(command)
    for name in SETTINGS:
        assert flag_name(name) in text, name
    for group in GROUPS:
        assert group in text
    assert "--router-top-k" in text and "[default: 10]" in text and "--no-allow-none" in text


def test_graph_offers_only_what_it_draws():
    text = help_text("graph")
    assert "--strategy" in text and "--focus" in text and "--mllm" not in text


def seen_settings(arguments: list[str], monkeypatch, env: dict[str, str] | None = None, **options):
    """The Configuration a decorated command receives for ``arguments``."""
    for key, value in (env or {}).items():
        monkeypatch.setenv(key, value)
    received = {}

    @with_settings(**options)
    def command(name: str = typer.Option("x", "--name"), *, settings: Configuration) -> None:
        received["settings"], received["name"] = settings, name

    assert run_command(command, arguments, "test") == 0
    return received["settings"], received["name"]


def test_flags_beat_environment_beat_file_beat_default(monkeypatch, tmp_path):
    config = tmp_path / "rex.toml"
    config.write_text('[agent]\nstrategy = "crs"\ncrs_top_k = 3\nmulti_ratio = 0.25\n')
    env = {"REX_CRS_TOP_K": "4", "REX_MLLM_THRESHOLD": "0.7"}
    settings, name = seen_settings(["--config", str(config), "--crs-top-k", "6", "--no-focus", "--name", "y"],
                                   monkeypatch, env)
    assert (settings.strategy, settings.crs_top_k, settings.multi_ratio, settings.mllm_threshold) == (
        "crs", 6, 0.25, 0.7)
    assert settings.focus is False and settings.router_top_k == 10 and name == "y"
    settings, _ = seen_settings([], monkeypatch, {"REX_CRS_TOP_K": "4"})
    assert settings.crs_top_k == 4


def test_command_defaults_sit_below_every_other_source(monkeypatch):
    settings, _ = seen_settings([], monkeypatch, defaults={"max_image_pixels": 1000})
    assert settings.max_image_pixels == 1000
    settings, _ = seen_settings([], monkeypatch, {"REX_MAX_IMAGE_PIXELS": "2000"}, defaults={"max_image_pixels": 1000})
    assert settings.max_image_pixels == 2000
    settings, _ = seen_settings(["--max-image-pixels", "3000"], monkeypatch, defaults={"max_image_pixels": 1000})
    assert settings.max_image_pixels == 3000


def test_a_bad_flag_value_is_one_line(monkeypatch, capsys):
    @with_settings()
    def command(*, settings: Configuration) -> None:
        raise AssertionError("not reached")

    assert run_command(command, ["--router-score-threshold", "1.5"], "test") == 2
    err = capsys.readouterr().err
    assert err.strip() == "error: router_score_threshold must lie in [0, 1], got 1.5"


def test_the_readme_settings_table_is_the_generated_one():
    assert settings_table() in README
    assert all(f"| `{name}` |" in settings_table() for name in SETTINGS)
