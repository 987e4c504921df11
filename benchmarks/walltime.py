"""Wall time of CRS selection against one prefill and against direct grounding, on one model.

A mid-size, randomly initialised Qwen2-VL (real architecture, patch 14, merge 2 and pixel
budget; ``MID_SIZE``) answers the standard query (``query.py``) three ways:

- ``QwenVL.select``: the CRS question, one forward pass (preprocessing included);
- one plain prefill: ``model(**inputs, logits_to_keep=1)`` on the same, already encoded
  CRS input: the forward alone, as ``generate`` and ``select`` run it (LM head on the
  last position only);
- ``QwenVL.ground``: direct grounding, generating exactly a typical box answer's length
  (``tokens.py``). Random weights would stop at any random end token, so generation is
  pinned with ``min_new_tokens`` = ``max_new_tokens`` = that length.

Each is run once to warm up, then ``--repeats`` times in turns; medians and minima are
reported with the ratios select/prefill and select/ground, next to the FLOP ratios of the same calls
(counted as in ``counting.py``). The text is tokenised by the tiny offline test
tokenizer, which splits words more finely than Qwen's: the token counts it gave are
printed with the results.

    python -m benchmarks.walltime --out outputs/bench [--device auto|cpu|cuda] [--repeats 5]
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Callable

import torch

from tools.devices import resolve_device, resolve_dtype
from tools.mllm import QwenVL
from tools.mllm.families import QWEN2_VL

from . import query
from .architectures import QWEN_ROPE, SPATIAL_MERGE, TEMPORAL_PATCH, MllmSpec, build_mllm
from .counting import LanguageModelCounter, vision_flops
from .report import format_table, run_standalone, write_json
from .tokens import qwen_token_count, typical_answer

# Sizes scaled down from Qwen2-VL-7B with the same proportions: head_dim 128, MLP 5.4x hidden,
# 4 query heads per KV head, the vision tower 30% of a grounding prefill's FLOPs. The
# vocabulary is 20,480, not 152k: at hidden 1024 a 152k LM head would be 40% of each decode
# step's FLOPs and weight reads (7.7% in Qwen2-VL-7B) and would inflate generation's cost.
MID_SIZE = MllmSpec(
    "mid-size random Qwen2-VL", "(random weights)", QWEN2_VL,
    # No bos/eos ids here: the generation config gets the tokenizer's.
    text=dict(hidden_size=1024, intermediate_size=5504, num_hidden_layers=8, num_attention_heads=8,
              num_key_value_heads=2, vocab_size=20480, rope_parameters=QWEN_ROPE, bos_token_id=None,
              eos_token_id=None),
    vision=dict(depth=4, embed_dim=512, mlp_ratio=4, num_heads=8, hidden_size=1024, patch_size=14,
                spatial_merge_size=SPATIAL_MERGE, temporal_patch_size=TEMPORAL_PATCH),
    tie_word_embeddings=False,
)


def build_random_qwen_vl(spec: MllmSpec, answer_tokens: int, device: str = "cpu", dtype: str = "auto") -> QwenVL:
    """A ``QwenVL`` around a randomly initialised Qwen2-VL of ``spec``, with the tiny offline tokenizer.

    Generation is greedy and always writes exactly ``answer_tokens`` tokens.
    """
    from transformers import GenerationConfig, Qwen2VLImageProcessor, Qwen2VLProcessor, Qwen2VLVideoProcessor

    from tests.tiny._qwen_tokenizer import build_qwen_tokenizer

    tokenizer = build_qwen_tokenizer()
    ids = {name: tokenizer.convert_tokens_to_ids(f"<|{name}|>") for name in
           ("endoftext", "im_end", "image_pad", "video_pad", "vision_start", "vision_end")}
    torch_device = resolve_device(device)
    torch.manual_seed(0)
    model = build_mllm(spec, torch_device, token_ids=dict(
        image_token_id=ids["image_pad"], video_token_id=ids["video_pad"],
        vision_start_token_id=ids["vision_start"], vision_end_token_id=ids["vision_end"]))
    model.to(resolve_dtype(dtype, torch_device))
    model.generation_config = GenerationConfig(
        eos_token_id=[ids["im_end"], ids["endoftext"]], pad_token_id=ids["endoftext"], do_sample=False,
        min_new_tokens=answer_tokens)  # random weights must not stop early
    patching = dict(patch_size=spec.vision["patch_size"], merge_size=SPATIAL_MERGE, temporal_patch_size=TEMPORAL_PATCH,
                    min_pixels=spec.min_pixels, max_pixels=spec.max_pixels)
    processor = Qwen2VLProcessor(image_processor=Qwen2VLImageProcessor(**patching),
                                 video_processor=Qwen2VLVideoProcessor(**patching),
                                 tokenizer=tokenizer, chat_template=tokenizer.chat_template)
    return QwenVL(model, processor, max_new_tokens=answer_tokens, name=spec.name)


def timed_runs(calls: dict[str, Callable[[], object]], repeats: int, device: torch.device) -> dict[str, list[float]]:
    """Wall times of ``repeats`` runs of each call, after one warm-up run of each.

    The calls take turns (one run of each per round), so a change of machine load
    during the benchmark affects them alike; the GPU, if any, is waited for.
    """

    def synchronize() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    for call in calls.values():
        call()
    times: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(repeats):
        for name, call in calls.items():
            synchronize()
            start = time.perf_counter()
            call()
            synchronize()
            times[name].append(time.perf_counter() - start)
    return times


def add_arguments(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """This benchmark's options, on a parser or on one group of ``run.py``'s parser."""
    parser.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda, cuda:N")
    parser.add_argument("--dtype", default="auto", help="auto (bf16/fp16 on GPU, fp32 on CPU), fp32, fp16, bf16")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per call (default: %(default)s)")


def run(args: argparse.Namespace) -> dict:
    """Time the three calls, print the table and write ``walltime.json``; returns the JSON payload."""
    answer_tokens = qwen_token_count(typical_answer(MID_SIZE.family))
    mllm = build_random_qwen_vl(MID_SIZE, answer_tokens, args.device, args.dtype)
    image, candidates = query.image(), query.candidates()
    # The same encoding select uses internally, so the prefill differs from select only by select's own work.
    crs_inputs, _ = mllm._encode([mllm._conversation(image, query.crs_question())])
    ground_inputs, _ = mllm._encode([mllm._conversation(image, query.grounding_prompt(MID_SIZE.family, focus=False))])

    def prefill() -> None:
        with torch.inference_mode():
            mllm.model(**crs_inputs, logits_to_keep=1)

    calls = {
        "select (CRS)": lambda: mllm.select(image, query.EXPRESSION, candidates),
        "prefill (CRS input)": prefill,
        "ground": lambda: mllm.ground(image, query.EXPRESSION),
    }
    times = timed_runs(calls, args.repeats, mllm.device)
    medians = {name: statistics.median(values) for name, values in times.items()}
    # The fastest run is the least disturbed by other work on a shared machine.
    minima = {name: min(values) for name, values in times.items()}
    tokens = {"image": int(crs_inputs["image_grid_thw"].prod() // SPATIAL_MERGE**2),
              "crs_input": crs_inputs["input_ids"].shape[1], "ground_input": ground_inputs["input_ids"].shape[1],
              "ground_answer": answer_tokens}
    flops = _flops_of_calls(tokens, tuple(crs_inputs["image_grid_thw"][0].tolist()))
    ratios = {f"select / {other}": {"median_wall_time": medians["select (CRS)"] / medians[other],
                                    "min_wall_time": minima["select (CRS)"] / minima[other],
                                    "flops": flops["select (CRS)"] / flops[other]}
              for other in ("prefill (CRS input)", "ground")}
    parameters = sum(p.numel() for p in mllm.model.parameters())
    print(f"device: {mllm.device} ({next(mllm.model.parameters()).dtype}), torch threads {torch.get_num_threads()}; "
          f"model: {MID_SIZE.name}, {parameters / 1e6:.0f} M parameters; tokens: {tokens}")
    print(format_table(["call", "median s", "min s", f"runs ({args.repeats})", "GFLOPs"],
                       [[name, f"{medians[name]:.3f}", f"{minima[name]:.3f}", " ".join(f"{t:.2f}" for t in times[name]),
                         f"{flops[name] / 1e9:.0f}"] for name in calls],
                       title="Wall time, one query (after one warm-up run)"))
    print(format_table(["ratio", "median wall time", "min wall time", "FLOPs"],
                       [[name, *(f"{value:.3f}" for value in ratio.values())] for name, ratio in ratios.items()]))
    payload = {
        "device": str(mllm.device), "dtype": str(next(mllm.model.parameters()).dtype),
        "model": {"name": MID_SIZE.name, "parameters": parameters, "text": MID_SIZE.text, "vision": MID_SIZE.vision},
        "tokens": tokens, "repeats": args.repeats,
        "seconds": times, "median_seconds": medians, "min_seconds": minima, "flops": flops, "ratios": ratios,
    }
    print(f"\nwrote {write_json(args.out, 'walltime', payload)}")
    return payload


def _flops_of_calls(tokens: dict, grid_thw: tuple[int, int, int]) -> dict[str, int]:
    """Counted FLOPs of the three timed calls, on a weightless copy of ``MID_SIZE``."""
    model = build_mllm(MID_SIZE)
    vision = vision_flops(model, grid_thw)
    language = LanguageModelCounter(model)
    crs = vision + language.prefill(tokens["crs_input"])
    ground = vision + language.prefill(tokens["ground_input"]) + language.decode(tokens["ground_answer"] - 1)
    return {"select (CRS)": crs, "prefill (CRS input)": crs, "ground": ground}


def main(argv: list[str] | None = None) -> None:
    run_standalone(__doc__, "walltime", add_arguments, run, argv)


if __name__ == "__main__":
    main()
