"""Prompt templates: one loader, named files, clear errors."""

import pytest

from prompts import available_prompts, load_prompt, prompt_fields, render_prompt


def test_reference_grounding_prompt_and_focus_suffix():
    assert render_prompt("qwen2_vl_ground", expression="the dog") == "Output the bounding box of the dog in the image."
    assert render_prompt("focus_suffix", target="dog") == " Please focus on dog."


def test_every_template_renders_with_its_own_fields():
    names = available_prompts()
    assert {"crs_select", "crs_none_instruction", "target_extraction", "qwen2_vl_ground"} <= set(names)
    for name in names:
        fields = {field: f"@@{field}@@" for field in prompt_fields(name)}
        text = render_prompt(name, **fields)
        # Every field lands in the text, and none is left unfilled.
        assert all(value in text for value in fields.values()), name
        assert not any("{" + field + "}" in text for field in fields), name


def test_missing_field_and_missing_template_are_named():
    with pytest.raises(KeyError, match="qwen2_vl_ground.*expression"):
        render_prompt("qwen2_vl_ground")
    with pytest.raises(FileNotFoundError, match="nope.txt"):
        load_prompt("nope")


def test_a_user_directory_replaces_the_defaults(tmp_path):
    (tmp_path / "qwen2_vl_ground.txt").write_text("Find {expression}.\n")
    assert render_prompt("qwen2_vl_ground", tmp_path, expression="it") == "Find it."
    assert available_prompts(tmp_path) == ["qwen2_vl_ground"]
