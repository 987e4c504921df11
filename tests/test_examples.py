"""The scripts in examples/ run as documented (tiny checkpoints stand in for Hub ids)."""

import json
import os
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
              "--detector", tiny_mm_grounding_dino, "--mllm", tiny_qwen2_vl, cwd=tmp_path)
    assert "path: crs" in out and (tmp_path / "located.png").is_file()


def test_batch_example_writes_one_line_per_query(tmp_path, tiny_mm_grounding_dino, tiny_qwen2_vl):
    queries = tmp_path / "queries.jsonl"
    queries.write_text("".join(json.dumps({"image": str(SNOW), "expression": e}) + "\n" for e in ["the skis", "a skier"]))
    run(EXAMPLES / "batch.py", queries, tmp_path / "results.jsonl", "--strategy", "sfa+crs", "--llm", "heuristic",
        "--detector", tiny_mm_grounding_dino, "--mllm", tiny_qwen2_vl, cwd=tmp_path)
    results = [json.loads(line) for line in (tmp_path / "results.jsonl").read_text().splitlines()]
    assert [r["expression"] for r in results] == ["the skis", "a skier"]
    assert all(r["strategy"] == "sfa+crs" and r["level"] in (1, 2) for r in results)


def test_http_client_example_asks_a_running_server(tmp_path, tiny_mm_grounding_dino, tiny_qwen2_vl):
    from agent import Agent, Configuration
    from agent.serve import create_app
    from agent.serve import BackgroundServer

    agent = Agent(config=Configuration(llm="heuristic", detector=str(tiny_mm_grounding_dino),
                                       mllm=str(tiny_qwen2_vl), device="cpu"))
    with BackgroundServer(create_app(agent)) as server:
        out = run(EXAMPLES / "http_client.py", SNOW, "the long snowboard to the right of the skis", "--url", server.url,
                  "--strategy", "crs", "--allow-none", cwd=tmp_path)
        missing = subprocess.run([sys.executable, EXAMPLES / "http_client.py", SNOW, " ", "--url", server.url],
                                 capture_output=True, text=True, timeout=60)
    assert out.startswith("path: crs  level: None  target: 'the long snowboard'")
    assert missing.returncode == 1 and missing.stderr.strip() == "error: 400: the expression is empty"


def test_demo_picks_models_that_fit_and_names_them(monkeypatch):
    import torch

    from examples.demo import SMALL_DETECTOR, SMALL_MLLM, choose_models
    from tools.defaults import DEFAULT_DETECTOR, DEFAULT_MLLM

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    detector, mllm, reason = choose_models(None, None)
    assert (detector, mllm) == (SMALL_DETECTOR, SMALL_MLLM) and "no GPU" in reason
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    for gigabytes, expected in ((80, (DEFAULT_DETECTOR, DEFAULT_MLLM)), (12, (SMALL_DETECTOR, SMALL_MLLM))):
        memory = type("Properties", (), {"total_memory": gigabytes * 2**30})()
        monkeypatch.setattr(torch.cuda, "get_device_properties", lambda index, memory=memory: memory)
        assert choose_models(None, None)[:2] == expected
    assert choose_models("/models/det", None)[:2] == ("/models/det", SMALL_MLLM)


def test_demo_runs_on_given_checkpoints_and_says_where_the_picture_is(tmp_path, tiny_mm_grounding_dino,
                                                                    tiny_qwen2_vl):
    repo = EXAMPLES.parent
    done = subprocess.run([sys.executable, "-m", "examples.demo", "--detector", str(tiny_mm_grounding_dino),
                           "--mllm", str(tiny_qwen2_vl), "--save", str(tmp_path / "demo.png")],
                          cwd=repo, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "local folder" in done.stderr.splitlines()[0] and "chosen by you" in done.stderr
    assert "timings (s): " in done.stdout and f"annotated image: {tmp_path / 'demo.png'}" in done.stdout
    assert (tmp_path / "demo.png").is_file()
    missing = subprocess.run([sys.executable, "-m", "examples.demo", "--detector", str(tmp_path / "none"),
                              "--mllm", str(tiny_qwen2_vl), "--save", str(tmp_path / "x.png")],
                             cwd=repo, capture_output=True, text=True, timeout=120,
                             env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert missing.returncode == 2 and missing.stderr.strip().splitlines()[-1].startswith("error: checkpoint")
