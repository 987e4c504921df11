"""Settings: defaults < config file < REX_* environment < arguments."""

import json

import pytest

from agent import Agent, Configuration
from agent.configuration import STRATEGIES
from tools.errors import UserInputError


def test_defaults_are_the_papers():
    config = Configuration()
    assert config.strategy == "sfa" and config.focus is True
    assert (config.router_top_k, config.router_score_threshold, config.router_iou_threshold) == (10, 0.2, 0.7)
    assert (config.crs_top_k, config.crs_iou_threshold) == (5, 0.7)
    assert config.detector == "openmmlab-community/mm_grounding_dino_large_all"
    assert config.mllm == "Qwen/Qwen2-VL-7B-Instruct"


def test_precedence_file_then_environment_then_arguments(tmp_path):
    file = tmp_path / "rex.toml"
    file.write_text('[agent]\nstrategy = "crs"\ncrs-top-k = 3\nallow_none = true\nmllm_threshold = 0.4\n')
    from_file = Configuration.load(file, env={})
    assert (from_file.strategy, from_file.crs_top_k, from_file.allow_none) == ("crs", 3, True)
    env = {"REX_STRATEGY": "mllm", "REX_ALLOW_NONE": "no", "REX_CRS_TOP_K": "4"}
    from_env = Configuration.load(file, env=env)
    assert (from_env.strategy, from_env.allow_none, from_env.crs_top_k) == ("mllm", False, 4)
    assert from_env.mllm_threshold == 0.4
    from_args = Configuration.load(file, env=env, strategy="sfa+crs", crs_top_k=None)
    assert (from_args.strategy, from_args.crs_top_k) == ("sfa+crs", 4)


def test_config_file_named_by_environment_and_json_files(tmp_path):
    file = tmp_path / "rex.json"
    file.write_text(json.dumps({"strategy": "specialist", "focus": False}))
    config = Configuration.load(env={"REX_CONFIG": str(file)})
    assert config.strategy == "specialist" and config.focus is False


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(strategy="fast"), "unknown strategy"),
        (dict(crs_top_k=0), "at least 1"),
        (dict(colour="red"), "unknown setting"),
        (dict(crs_top_k="many"), "not a valid int"),
    ],
)
def test_bad_settings_are_clear_errors(kwargs, message):
    with pytest.raises(UserInputError, match=message):
        Configuration.load(env={}, **kwargs)


def test_bad_environment_boolean_and_bad_file(tmp_path):
    with pytest.raises(UserInputError, match="REX_FOCUS='maybe' is not a boolean"):
        Configuration.load(env={"REX_FOCUS": "maybe"})
    with pytest.raises(UserInputError, match="multi='maybe': choose false, true or auto"):
        Configuration.load(env={"REX_MULTI": "maybe"})
    assert [Configuration.load(env={"REX_MULTI": raw}).multi for raw in ("auto", "TRUE", "off")] == ["auto", True, False]
    broken = tmp_path / "broken.toml"
    broken.write_text("strategy = ")
    with pytest.raises(UserInputError, match="broken.toml"):
        Configuration.load(broken, env={})


# strategy: (detector, MLLM, target extractor) without focus, and the extractor with focus.
MODELS_NEEDED = {
    "specialist": (True, False, False, True),
    "mllm": (False, True, False, True),
    "sfa": (True, True, True, True),
    "crs": (True, True, False, True),
    "sfa+crs": (True, True, True, True),
}


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_which_models_each_strategy_needs(strategy):
    plain, focused = Configuration(strategy=strategy, focus=False), Configuration(strategy=strategy)
    detector, mllm, extractor, extractor_with_focus = MODELS_NEEDED[strategy]
    assert (plain.uses_detector, plain.uses_mllm, plain.uses_extractor) == (detector, mllm, extractor)
    assert focused.uses_extractor == extractor_with_focus
    # The reference profile's CRS never extracts a target, focus or not.
    assert Configuration(strategy="crs", profile="reference").uses_extractor is False


def test_agent_arguments_override_a_given_configuration():
    agent = Agent("crs", False, config=Configuration(strategy="sfa", allow_none=True), multi=True)
    assert (agent.config.strategy, agent.config.focus, agent.config.allow_none, agent.config.multi) == (
        "crs", False, True, True)


def test_the_reference_profile_is_one_setting_away(tmp_path):
    assert Configuration.load(env={"REX_PROFILE": "reference"}).profile == "reference"
    config_file = tmp_path / "rex.toml"
    config_file.write_text('[agent]\nprofile = "reference"\nstrategy = "crs"\n')
    reference = Configuration.load(config_file, env={})
    assert (reference.routing.nms, reference.crs_rule.nms) == ("opencv", "opencv")
    assert not reference.crs_focus and not reference.uses_extractor  # the scripts' CRS extracts nothing
    default = reference.updated(profile="default")
    assert (default.routing.nms, default.crs_focus, default.uses_extractor) == ("iou", True, True)
    with pytest.raises(UserInputError, match="unknown profile"):
        Configuration(profile="paper")
