"""The agent-setting flags shared by ``agent-cli locate`` and ``agent-cli eval``, declared once."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

Profile = Annotated[
    Optional[str],
    typer.Option("--profile", help="default, or reference: the authors' released scripts (README, Profiles)."),
]
Strategy = Annotated[Optional[str], typer.Option("--strategy", help="specialist, mllm, sfa, crs or sfa+crs.")]
Focus = Annotated[Optional[bool], typer.Option("--focus/--no-focus", help="Target-focus matching and prompt.")]
AllowNone = Annotated[Optional[bool], typer.Option("--allow-none/--no-allow-none", help="Allow 'no target'.")]
Multi = Annotated[Optional[bool], typer.Option("--multi/--no-multi", help="Allow several targets.")]
DetectorName = Annotated[Optional[str], typer.Option("--detector", help="Detector Hub id or local folder.")]
MllmName = Annotated[Optional[str], typer.Option("--mllm", help="Qwen VL Hub id or folder, or openai:MODEL.")]
LlmName = Annotated[
    Optional[str], typer.Option("--llm", help="Target extraction: auto, mllm, heuristic, openai:MODEL.")
]
Adapter = Annotated[Optional[str], typer.Option("--adapter", help="PEFT LoRA adapter folder for the MLLM.")]
Device = Annotated[Optional[str], typer.Option("--device", help="auto, cpu, cuda or cuda:N.")]
Dtype = Annotated[Optional[str], typer.Option("--dtype", help="auto, fp32, fp16 or bf16.")]
DetectorDtype = Annotated[
    Optional[str], typer.Option("--detector-dtype", help="Detector weights: auto (float32), fp32, fp16 or bf16.")
]
MaxPixels = Annotated[Optional[int], typer.Option("--max-pixels", help="Pixel budget of the MLLM's image.")]
ConfigFile = Annotated[Optional[Path], typer.Option("--config", help="Settings file (TOML or JSON).")]
