"""``agent-cli locate`` and ``graph`` end to end on the tiny real checkpoints."""

import json

import pytest
from PIL import Image

from agent import Agent, Configuration
from agent.cli import main
from tests.helpers import without_timings

EXPRESSION = "the red car to the left of the green car"


@pytest.fixture(scope="module")
def image_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("images") / "street.png"
    image = Image.new("RGB", (160, 120), (90, 120, 160))
    image.paste((200, 30, 30), (10, 40, 40, 100))
    image.paste((30, 200, 30), (70, 40, 100, 100))
    image.save(path)
    return path


@pytest.fixture(scope="module")
def models(tiny_mm_grounding_dino, tiny_qwen2_vl):
    return ["--detector", str(tiny_mm_grounding_dino), "--mllm", str(tiny_qwen2_vl), "--device", "cpu"]



@pytest.mark.parametrize("strategy", ["specialist", "mllm", "sfa", "crs", "sfa+crs"])
def test_every_strategy_runs_saves_a_png_and_prints_its_result_as_json(
    strategy, capsys, tmp_path, image_file, models, tiny_mm_grounding_dino, tiny_qwen2_vl
):
    out_png = tmp_path / "out.png"
    code = main(["locate", str(image_file), EXPRESSION, "--strategy", strategy, "--llm", "heuristic",
                 *models, "--json", "--save", str(out_png)])
    printed = capsys.readouterr().out
    assert code == 0
    result = json.loads(printed)
    with Image.open(out_png) as saved:
        assert saved.format == "PNG" and saved.size == (160, 120)
    agent = Agent(config=Configuration(strategy=strategy, llm="heuristic", detector=str(tiny_mm_grounding_dino),
                                       mllm=str(tiny_qwen2_vl), device="cpu"))
    expected = agent.locate(image_file, EXPRESSION).to_dict()
    assert without_timings(result) == without_timings(expected)
    assert result["strategy"] == strategy and result["trace"][-1] == "finish"
    # Random weights give meaningless boxes, but every path with a detector answers with one.
    assert len(result["boxes"]) == len(result["scores"])
    if strategy != "mllm":
        assert len(result["boxes"]) == 1
    assert set(result["timings"]) >= set(result["trace"]) | {"total"}


def test_local_mllm_serves_as_target_extractor(capsys, image_file, models):
    # llm="auto": the loaded Qwen model is asked text-only; the tiny one answers noise,
    # so the heuristic fallback is taken and recorded.
    code = main(["locate", str(image_file), EXPRESSION, "--strategy", "sfa", *models, "--json"])
    result = json.loads(capsys.readouterr().out)
    assert code == 0
    assert result["target"] is not None and result["target"] in EXPRESSION
    assert result["level"] in (1, 2)


def test_table_output_names_path_and_target(capsys, image_file, models):
    code = main(["locate", str(image_file), EXPRESSION, "--strategy", "specialist", "--llm", "heuristic", *models])
    out = capsys.readouterr().out
    assert code == 0 and "path specialist" in out and "target 'the red car'" in out


def test_config_file_and_environment_feed_the_settings(capsys, tmp_path, image_file, models, monkeypatch):
    config = tmp_path / "rex.toml"
    config.write_text('[agent]\nstrategy = "crs"\ncrs_top_k = 3\n')
    monkeypatch.setenv("REX_LLM", "heuristic")
    code = main(["locate", str(image_file), EXPRESSION, "--config", str(config), *models, "--json"])
    result = json.loads(capsys.readouterr().out)
    assert code == 0 and result["strategy"] == "crs"
    assert len(result["selection"]["letters"]) == 3


@pytest.mark.parametrize(
    "strategy, present, absent",
    [("sfa", ["route", "specialist", "mllm"], ["crs"]), ("crs", ["crs"], ["route", "mllm"])],
)
def test_graph_prints_the_strategys_mermaid_diagram(capsys, strategy, present, absent):
    assert main(["graph", "--strategy", strategy]) == 0
    diagram = capsys.readouterr().out
    assert "graph TD" in diagram
    for node in present:
        assert f"\t{node}({node})" in diagram
    for node in absent:
        assert f"\t{node}({node})" not in diagram
