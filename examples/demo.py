"""``make demo``: one query with models that fit where it runs, then where the picture went.

    python -m examples.demo --image examples/images/snow.png --text "the long snowboard to the right of the skis"
    python -m examples.demo ... --detector /models/mm_gdino_large --mllm Qwen/Qwen2-VL-7B-Instruct

Without ``--detector``/``--mllm`` (``make demo DEMO_DETECTOR=... DEMO_MLLM=...``) it takes the
paper's models (MM-GDINO-L, Qwen2-VL-7B-Instruct) on a GPU with room for them, and otherwise
MM-GDINO-T with Qwen2-VL-2B-Instruct: the 7B model in fp32 on a CPU needs about 32 GB of memory.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import typer

from agent.cli.main import check_save_path
from tools.defaults import DEFAULT_DETECTOR, DEFAULT_MLLM

SMALL_DETECTOR = "openmmlab-community/mm_grounding_dino_tiny_o365v1_goldg_v3det"
SMALL_MLLM = "Qwen/Qwen2-VL-2B-Instruct"
# bf16 weights of Qwen2-VL-7B are about 16 GB; a GPU with less gets the small pair.
PAPER_MODELS_GPU_BYTES = 24 * 2**30
# What from_pretrained fetches of a repository holding safetensors weights.
SKIPPED_WEIGHTS = (".bin", ".pth", ".pt", ".h5", ".msgpack", ".onnx", ".gguf", ".ckpt")


def choose_models(detector: str | None, mllm: str | None) -> tuple[str, str, str]:
    """The detector, the MLLM and why: the user's, the paper's on a large GPU, else the small pair."""
    import torch

    if torch.cuda.is_available():
        memory = torch.cuda.get_device_properties(0).total_memory
        fits = memory >= PAPER_MODELS_GPU_BYTES
        reason = f"GPU with {memory / 2**30:.0f} GB" + ("" if fits else ", too small for the 7B MLLM")
    else:
        fits, reason = False, "no GPU: the 7B MLLM would need about 32 GB of memory in fp32"
    default_detector, default_mllm = (DEFAULT_DETECTOR, DEFAULT_MLLM) if fits else (SMALL_DETECTOR, SMALL_MLLM)
    if detector or mllm:
        reason = "chosen by you" + ("" if detector and mllm else f"; the other one for a {reason}")
    return detector or default_detector, mllm or default_mllm, reason


def download_size(name: str) -> str:
    """What loading ``name`` will fetch: a local folder, the Hub cache, or its size on the Hub."""
    if Path(name).is_dir():
        return "local folder"
    from huggingface_hub import HfApi, try_to_load_from_cache

    try:
        if isinstance(try_to_load_from_cache(name, "config.json"), str):
            return "cached"
    except ValueError:  # neither a folder nor a Hub id: check_checkpoints says so
        return "no such folder"
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes"):
        return "not cached, and HF_HUB_OFFLINE is set"
    try:
        files = HfApi().model_info(name, files_metadata=True).siblings or []
    except Exception:  # noqa: BLE001 - offline, or a private repository: the size is not known
        return "size unknown: the Hub did not answer"
    has_safetensors = any(f.rfilename.endswith(".safetensors") for f in files)
    size = sum(f.size or 0 for f in files if not (has_safetensors and f.rfilename.endswith(SKIPPED_WEIGHTS)))
    return f"{size / 1e9:.1f} GB to download"


def demo(
    image: Path = typer.Option(Path("examples/images/snow.png"), "--image", help="Image file."),
    text: str = typer.Option("the long snowboard to the right of the skis", "--text", help="Referring expression."),
    detector: Optional[str] = typer.Option(None, "--detector", help="Detector Hub id or folder (default: chosen)."),
    mllm: Optional[str] = typer.Option(None, "--mllm", help="MLLM Hub id or folder (default: chosen)."),
    save: Path = typer.Option(Path("outputs/demo.png"), "--save", help="Where to draw the answer."),
) -> None:
    """Locate TEXT in IMAGE with SFA and draw the answer."""
    from tools.images import load_image
    from tools.text import clean_expression

    picture, expression = load_image(image), clean_expression(text)
    check_save_path(save)
    from agent import Agent
    from tools.drawing import draw_detections

    detector, mllm, reason = choose_models(detector, mllm)
    typer.echo(f"demo: {detector} ({download_size(detector)}) + {mllm} ({download_size(mllm)}); {reason}", err=True)
    agent = Agent(strategy="sfa", detector=detector, mllm=mllm)
    agent.check_checkpoints()  # offline without weights: one line naming the missing checkpoint
    result = agent.locate(picture, expression)
    draw_detections(picture, result.detections).save(save)
    boxes = ", ".join(f"[{', '.join(f'{v:.0f}' for v in box)}] {score:.2f}" for box, score in result.detections)
    typer.echo(f"{expression!r}: {boxes or 'no target'} (path {result.path}, level {result.level})")
    typer.echo("timings (s): " + ", ".join(f"{step} {seconds:.2f}" for step, seconds in result.timings.items()))
    typer.echo(f"annotated image: {save}")


if __name__ == "__main__":
    from tools.cli_runner import run_command

    raise SystemExit(run_command(demo, None, "make demo"))
