"""The scripts in examples/ run as documented (tiny checkpoints stand in for Hub ids)."""

import json
import subprocess
import sys
from pathlib import Path

from PIL import Image

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
SNOW = EXAMPLES / "images" / "snow.png"


def run(*args, cwd):
    done = subprocess.run([sys.executable, *map(str, args)], cwd=cwd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_example_image_is_committed_and_reproducible(tmp_path):
    with Image.open(SNOW) as image:
        assert image.size == (640, 480)
    from examples.make_images import snow_scene

    import numpy as np

    with Image.open(SNOW) as committed:
        assert np.array_equal(np.asarray(snow_scene()), np.asarray(committed.convert("RGB")))


def test_custom_backend_example_finds_the_blue_snowboard(tmp_path):
    out = run(EXAMPLES / "custom_backend.py", cwd=tmp_path)
    assert "[[230.0, 215.0, 281.0, 441.0]]" in out
    assert (tmp_path / "custom_backend.png").is_file()


def test_locate_example(tmp_path, tiny_mm_grounding_dino, tiny_qwen2_vl):
    out = run(EXAMPLES / "locate.py", SNOW, "the long snowboard to the right of the skis", "--strategy", "crs",
              "--detector", tiny_mm_grounding_dino, "--mllm", tiny_qwen2_vl, cwd=tmp_path)  # fmt: skip
    assert "path: crs" in out and (tmp_path / "located.png").is_file()


def test_batch_example_writes_one_line_per_query(tmp_path, tiny_mm_grounding_dino, tiny_qwen2_vl):
    queries = tmp_path / "queries.jsonl"
    queries.write_text("".join(json.dumps({"image": str(SNOW), "expression": e}) + "\n" for e in ["the skis", "a skier"]))
    run(EXAMPLES / "batch.py", queries, tmp_path / "results.jsonl", "--strategy", "sfa+crs", "--llm", "heuristic",
        "--detector", tiny_mm_grounding_dino, "--mllm", tiny_qwen2_vl, cwd=tmp_path)  # fmt: skip
    results = [json.loads(line) for line in (tmp_path / "results.jsonl").read_text().splitlines()]
    assert [r["expression"] for r in results] == ["the skis", "a skier"]
    assert all(r["strategy"] == "sfa+crs" and r["level"] in (1, 2) for r in results)


def test_http_client_example_asks_a_running_server(tmp_path, tiny_mm_grounding_dino, tiny_qwen2_vl):
    from agent import Agent, Configuration
    from agent.serve import create_app
    from agent.serve import BackgroundServer

    agent = Agent(config=Configuration(llm="heuristic", detector=str(tiny_mm_grounding_dino),
                                       mllm=str(tiny_qwen2_vl), device="cpu"))  # fmt: skip
    with BackgroundServer(create_app(agent)) as server:
        out = run(EXAMPLES / "http_client.py", SNOW, "the long snowboard to the right of the skis", "--url", server.url,
                  "--strategy", "crs", "--allow-none", cwd=tmp_path)  # fmt: skip
        missing = subprocess.run([sys.executable, EXAMPLES / "http_client.py", SNOW, " ", "--url", server.url],
                                 capture_output=True, text=True, timeout=60)  # fmt: skip
    assert out.startswith("path: crs  level: None  target: 'the long snowboard'")
    assert missing.returncode == 1 and missing.stderr.strip() == "error: 400: the expression is empty"
