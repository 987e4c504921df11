"""FLOPs per query of every strategy at real scale, counted on weightless (``meta``) models.

For the standard query (``query.py``: a 640x480 image, "the long snowboard to the right
of the skis", five CRS candidates) this counts, for MM-GDINO-T/L and Qwen2-VL-2B/7B and
Qwen2.5-VL-7B, the FLOPs of each model call, then composes each strategy's expected
FLOPs per query (``paths.py``) at a Level-1 share ``p``, and SFA's cost under each way of
extracting the target (uncached, continuing the prompt's cached fixed part, 8 expressions per
prompt, the model-free heuristic, a remote model). How FLOPs are counted: ``counting.py``;
prompt and answer tokens (real vocabularies): ``tokens.py``.

    python -m benchmarks.flops --out outputs/bench [--level1-share 0.54]
"""

from __future__ import annotations

import argparse
import time

from . import query
from .architectures import (DETECTORS, MLLMS, MM_GDINO_LARGE, QWEN2_VL_7B, DetectorSpec, MllmSpec,
                            build_detector, build_mllm, detector_input_size, image_token_count, qwen_vision_grid)
from .counting import LanguageModelCounter, detector_flops, vision_flops
from .paths import (DEFAULT_LEVEL1_SHARE, DetectorFlops, ExtractionMode, MllmFlops, check_targets, extraction_targets,
                    path_flops, ratios_to_mllm)
from .report import flops_text, format_table, run_standalone, write_json
from .tokens import (bert_token_count, cached_prefix_token_count, detector_caption, prompt_token_count,
                     qwen_token_count, typical_answer)

BATCH = 8  # expressions per extraction prompt in locate_batch and eval (ChatExtractor's batch_size)

# The pair the targets are stated for (the paper's router/specialist and MLLM).
HEADLINE_PAIR = (MM_GDINO_LARGE.name, QWEN2_VL_7B.name)


def count_detector(spec: DetectorSpec) -> tuple[DetectorFlops, dict]:
    """The router and specialist forwards of ``spec``, and the input sizes they saw."""
    model = build_detector(spec)
    input_size = detector_input_size(query.IMAGE_SIZE)
    tokens = {"router_text": bert_token_count(detector_caption(query.target_phrase())),
              "specialist_text": bert_token_count(detector_caption(query.EXPRESSION))}
    router = detector_flops(model, input_size, tokens["router_text"])
    specialist = detector_flops(model, input_size, tokens["specialist_text"])
    flops = DetectorFlops(spec.name, router=router.total, specialist=specialist.total, backbone=specialist.backbone)
    return flops, {"hub_id": spec.hub_id, "input_size_hw": list(input_size), "text_tokens": tokens}


def count_extraction(language: LanguageModelCounter) -> list[ExtractionMode]:
    """Target extraction per query, for each way ``Agent`` can run it."""
    from tools.extraction.parsing import extraction_prompt_prefix

    prefix = extraction_prompt_prefix()
    single, batch = query.extraction_question(), query.extraction_question(query.batch_expressions(BATCH))
    inputs = {"single": prompt_token_count(single), "batch": prompt_token_count(batch)}
    cached = {"single": cached_prefix_token_count(single, prefix), "batch": cached_prefix_token_count(batch, prefix)}
    answers = {"single": qwen_token_count(query.extraction_answer()),
               "batch": qwen_token_count(query.extraction_answer(query.batch_expressions(BATCH)))}

    def local(kind: str, past: int, queries: int) -> float:
        prefill = language.prefill(inputs[kind] - past, past=past)
        return (prefill + language.decode(answers[kind] - 1)) / queries

    return [
        ExtractionMode("mllm, uncached", "(before the prefix cache)", local("single", 0, 1), inputs["single"],
                       answers["single"]),
        ExtractionMode("mllm, cached prefix", "Agent.locate, serve", local("single", cached["single"], 1),
                       inputs["single"] - cached["single"], answers["single"]),
        ExtractionMode(f"mllm, {BATCH} per prompt, cached prefix", "locate_batch, eval",
                       local("batch", cached["batch"], BATCH), (inputs["batch"] - cached["batch"]) / BATCH,
                       answers["batch"] / BATCH),
        ExtractionMode("heuristic", "llm=heuristic", 0.0, 0, 0),
        ExtractionMode("openai:MODEL, 1 per prompt", "llm=openai:... (remote)", 0.0, inputs["single"],
                       answers["single"]),
        ExtractionMode(f"openai:MODEL, {BATCH} per prompt", "llm=openai:... (remote)", 0.0, inputs["batch"] / BATCH,
                       answers["batch"] / BATCH),
    ]


def count_mllm(spec: MllmSpec) -> tuple[MllmFlops, dict]:
    """Vision, prefill and decode FLOPs of ``spec`` for grounding, CRS and target extraction."""
    model = build_mllm(spec)
    grid = qwen_vision_grid(spec, query.IMAGE_SIZE)
    image_tokens = image_token_count(spec, query.IMAGE_SIZE)
    vision = vision_flops(model, grid)
    answer_tokens = qwen_token_count(typical_answer(spec.family))
    tokens = {
        "image": image_tokens,
        "ground_input": prompt_token_count(query.grounding_prompt(spec.family, focus=False), image_tokens),
        "focus_input": prompt_token_count(query.grounding_prompt(spec.family, focus=True), image_tokens),
        "crs_input": prompt_token_count(query.crs_question(), image_tokens),
        "extract_input": prompt_token_count(query.extraction_question()),
        "ground_answer": answer_tokens,
        "extract_answer": qwen_token_count(query.extraction_answer()),
    }
    language = LanguageModelCounter(model)

    def answer(prefill_tokens: int, answer_tokens: int, with_image: bool) -> tuple[int, int]:
        # The prefill yields the first answer token; each further one costs a decode step.
        prefill = language.prefill(prefill_tokens) + (vision if with_image else 0)
        return prefill, language.decode(answer_tokens - 1)

    ground = answer(tokens["ground_input"], answer_tokens, with_image=True)
    focus = answer(tokens["focus_input"], answer_tokens, with_image=True)
    extract = answer(tokens["extract_input"], tokens["extract_answer"], with_image=False)
    flops = MllmFlops(spec.name, vision=vision, ground_prefill=ground[0], ground_decode=ground[1],
                      focus_prefill=focus[0], focus_decode=focus[1],
                      crs_prefill=vision + language.prefill(tokens["crs_input"]),
                      extract_prefill=extract[0], extract_decode=extract[1])
    details = {"hub_id": spec.hub_id, "parameters": sum(p.numel() for p in model.parameters()),
               "vision_grid_thw": list(grid), "tokens": tokens, "extraction_modes": count_extraction(language)}
    return flops, details


def add_arguments(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """This benchmark's options, on a parser or on one group of ``run.py``'s parser."""
    parser.add_argument("--level1-share", type=float, default=DEFAULT_LEVEL1_SHARE,
                        help="share p of queries routed to Level 1 (default: %(default)s)")


def run(args: argparse.Namespace) -> dict:
    """Count, print the tables and write ``flops.json``; returns the JSON payload."""
    start = time.perf_counter()
    detectors, mllms, details = [], [], {}
    for spec in DETECTORS:
        flops, details[spec.name] = count_detector(spec)
        detectors.append(flops)
    for spec in MLLMS:
        flops, details[spec.name] = count_mllm(spec)
        mllms.append(flops)
    share = args.level1_share
    pairs = {(d.name, m.name): path_flops(d, m, share) for d in detectors for m in mllms}
    by_name = {flops.name: flops for flops in detectors + mllms}
    targets = check_targets(by_name[HEADLINE_PAIR[0]], by_name[HEADLINE_PAIR[1]], share)
    headline_mllm = by_name[HEADLINE_PAIR[1]]
    modes = details[HEADLINE_PAIR[1]]["extraction_modes"]
    targets += extraction_targets({d.name: d for d in detectors}, headline_mllm, modes[1], share)

    print(_component_table(detectors, mllms, details))
    print()
    print(_paths_table(pairs, share))
    print()
    print(_extraction_table(detectors, headline_mllm, modes, share))
    print()
    print(format_table(["target", "value", "limit", "met"],
                       [[t.name, f"{t.value:.3f}", f"{t.limit:g}", "yes" if t.met else "NO"] for t in targets],
                       title=f"Targets, {HEADLINE_PAIR[0]} + {HEADLINE_PAIR[1]}, p = {share}"))
    payload = {
        "query": {"image_size_wh": list(query.IMAGE_SIZE), "expression": query.EXPRESSION,
                  "target": query.target_phrase(), "candidates": query.CANDIDATE_BOXES},
        "level1_share": share,
        "models": {name: {key: value for key, value in info.items() if key != "extraction_modes"}
                   for name, info in details.items()},
        "detectors": [vars(d) for d in detectors],
        "mllms": [m.to_dict() for m in mllms],
        "paths": [{"detector": d, "mllm": m, "flops": flops, "ratio_to_mllm": ratios_to_mllm(flops)}
                  for (d, m), flops in pairs.items()],
        "extraction": [{"detector": d.name, "mllm": headline_mllm.name, **mode.to_dict(),
                        "ratio_to_mllm": {name: ratios_to_mllm(path_flops(d, headline_mllm, share, mode.flops))[name]
                                          for name in ("sfa", "sfa+crs")}}
                       for d in detectors for mode in modes],
        "targets": {"pair": list(HEADLINE_PAIR), "results": [t.to_dict() for t in targets]},
        "seconds": time.perf_counter() - start,
    }
    print(f"\nwrote {write_json(args.out, 'flops', payload)}")
    return payload


def _component_table(detectors: list[DetectorFlops], mllms: list[MllmFlops], details: dict) -> str:
    rows = [[d.name, "router (target phrase)", flops_text(d.router)] for d in detectors]
    rows += [[d.name, "specialist (expression)", flops_text(d.specialist)] for d in detectors]
    rows += [[d.name, "  of which Swin backbone (text-independent)", flops_text(d.backbone)] for d in detectors]
    for m in mllms:
        tokens = details[m.name]["tokens"]
        rows += [
            [m.name, f"vision tower ({tokens['image']} image tokens)", flops_text(m.vision)],
            [m.name, f"grounding prefill ({tokens['ground_input']} tokens, vision incl.)",
             flops_text(m.ground_prefill)],
            [m.name, f"grounding decode ({tokens['ground_answer'] - 1} steps)", flops_text(m.ground_decode)],
            [m.name, f"focus grounding prefill+decode ({tokens['focus_input']} tokens)", flops_text(m.focus_grounding)],
            [m.name, f"CRS prefill ({tokens['crs_input']} tokens, vision incl.)", flops_text(m.crs_prefill)],
            [m.name, f"extraction ({tokens['extract_input']} in, {tokens['extract_answer']} out)",
             flops_text(m.extraction)],
        ]
    return format_table(["model", "call", "FLOPs"], rows, title="FLOPs per model call (one 640x480 query)")


def _extraction_table(detectors: list[DetectorFlops], mllm: MllmFlops, modes: list[ExtractionMode],
                      share: float) -> str:
    rows = []
    for detector in detectors:
        for mode in modes:
            ratios = ratios_to_mllm(path_flops(detector, mllm, share, mode.flops))
            tokens = f"{mode.prompt_tokens:.1f} in, {mode.answer_tokens:.1f} out"
            rows.append([f"{detector.name} + {mllm.name}", mode.name, mode.used_by, flops_text(mode.flops), tokens,
                         f"{ratios['sfa']:.1%}", f"{ratios['sfa+crs']:.1%}"])
    return format_table(["pair", "extraction", "used by", "local FLOPs / query", "model tokens / query", "sfa",
                         "sfa+crs"], rows,
                        title=f"SFA by target extraction (share of MLLM-only), Level-1 share p = {share}")


def _paths_table(pairs: dict, share: float) -> str:
    rows = []
    for (detector, mllm), flops in pairs.items():
        ratios = ratios_to_mllm(flops)
        rows += [[f"{detector} + {mllm}", name, flops_text(value), f"{ratios[name]:.1%}"]
                 for name, value in flops.items()]
    return format_table(["pair", "strategy", "FLOPs per query", "of MLLM-only"], rows,
                        title=f"Expected FLOPs per query by strategy, Level-1 share p = {share}")


def main(argv: list[str] | None = None) -> None:
    run_standalone(__doc__, "flops", add_arguments, run, argv)


if __name__ == "__main__":
    main()
