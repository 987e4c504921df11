"""Mechanics of the performance benchmarks (``benchmarks/``): counting, composition, plumbing.

No timing is asserted: timings depend on the machine. FLOP counting runs on tiny
configurations of the real architectures, and the meta-device shortcuts are checked
against real forwards of the same tiny models.
"""

from __future__ import annotations

import json

import pytest
import torch

from benchmarks import flops, orchestration, query, run
from benchmarks.architectures import (MLLMS, MM_GDINO_LARGE, QWEN2_VL_7B, DetectorSpec, MllmSpec, build_detector,
                                      build_mllm, detector_input_size, image_token_count, qwen_vision_grid)
from benchmarks.counting import LanguageModelCounter, count_flops, detector_flops, vision_flops
from benchmarks.paths import (DetectorFlops, ExtractionMode, MllmFlops, check_targets, extraction_targets, path_flops,
                              ratios_to_mllm)
from benchmarks.tokens import bert_token_count, detector_caption, prompt_token_count, qwen_token_count
from benchmarks.walltime import build_random_qwen_vl, timed_runs
from tools.mllm.families import QWEN2_5_VL, QWEN2_VL

TINY_ROPE = dict(rope_type="default", mrope_section=[2, 3, 3], rope_theta=1e6)  # head_dim 16
TINY_TEXT = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, vocab_size=576, rope_parameters=TINY_ROPE, bos_token_id=None, eos_token_id=None)
TINY_PIXELS = dict(min_pixels=4 * 28 * 28, max_pixels=64 * 28 * 28)
TINY_QWEN2_VL = MllmSpec(
    "tiny Qwen2-VL", "-", QWEN2_VL, text=TINY_TEXT,
    vision=dict(depth=2, embed_dim=32, num_heads=4, mlp_ratio=4, hidden_size=64, patch_size=14, spatial_merge_size=2,
                temporal_patch_size=2),
    tie_word_embeddings=False, **TINY_PIXELS)
TINY_QWEN2_5_VL = MllmSpec(
    "tiny Qwen2.5-VL", "-", QWEN2_5_VL, text=TINY_TEXT,
    vision=dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=4, out_hidden_size=64, window_size=112,
                fullatt_block_indexes=[1], patch_size=14, spatial_merge_size=2, temporal_patch_size=2),
    tie_word_embeddings=False, **TINY_PIXELS)
TINY_DETECTOR = DetectorSpec(
    "tiny MM-GDINO", "-",
    swin=dict(embed_dim=16, depths=[1, 1, 1, 1], num_heads=[1, 1, 2, 2], window_size=7,
              out_features=["stage2", "stage3", "stage4"]),
    num_feature_levels=4,
    text=dict(vocab_size=100, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
              max_position_embeddings=64),
    transformer=dict(d_model=32, num_queries=30, encoder_layers=1, decoder_layers=2, encoder_ffn_dim=64,
                     decoder_ffn_dim=64, encoder_attention_heads=2, decoder_attention_heads=2, encoder_n_points=2,
                     decoder_n_points=2, max_text_len=32),
)


# ---------------------------------------------------------------- token and size rules

def test_token_counts_come_from_the_real_vocabularies():
    # <|box_start|> ( 1 2 3 , 4 5 6 ),( 7 8 9 , 9 9 9 ) <|box_end|> <|im_end|>
    assert qwen_token_count("<|box_start|>(123,456),(789,999)<|box_end|><|im_end|>") == 20
    assert qwen_token_count("the long snowboard") == 4  # the, Ġlong, Ġsnow, board
    assert detector_caption("  the long snowboard") == "the long snowboard."
    assert bert_token_count("the long snowboard.") == 7  # [CLS] the long snow ##board . [SEP]
    text_only = prompt_token_count("Where is it?")
    assert prompt_token_count("Where is it?", image_tokens=100) == text_only + 100 + 2  # + vision start / end


def test_input_sizes_follow_the_processors():
    assert detector_input_size((640, 480)) == (800, 1066)  # shortest edge 800
    assert qwen_vision_grid(QWEN2_VL_7B, (640, 480)) == (1, 34, 46)  # smart_resize to 644x476
    assert image_token_count(QWEN2_VL_7B, (640, 480)) == 17 * 23


def test_published_sizes_give_the_published_parameter_counts():
    sizes = {spec.name: sum(p.numel() for p in build_mllm(spec).parameters()) for spec in MLLMS}
    assert sizes == {"Qwen2-VL-2B": pytest.approx(2.21e9, rel=0.01), "Qwen2-VL-7B": pytest.approx(8.29e9, rel=0.01),
                     "Qwen2.5-VL-7B": pytest.approx(8.29e9, rel=0.01)}
    assert MM_GDINO_LARGE.swin["embed_dim"] == 192 and MM_GDINO_LARGE.num_feature_levels == 5


# ---------------------------------------------------------------- FLOP counting

def test_tiny_counts_are_positive_and_grow_with_the_prompt():
    detector, _ = flops.count_detector(TINY_DETECTOR)
    assert detector.specialist > 0 and detector.router > 0 and 0 < detector.backbone < detector.specialist
    mllm, details = flops.count_mllm(TINY_QWEN2_VL)
    tokens = details["tokens"]
    assert tokens["crs_input"] > tokens["focus_input"] > tokens["ground_input"] > tokens["image"] > 0
    assert mllm.crs_prefill > mllm.focus_prefill > mllm.ground_prefill > mllm.vision > 0
    assert 0 < mllm.ground_decode < mllm.ground_prefill and mllm.extraction > 0


# FlopCounterMode cannot see inside CPU's fused attention kernel, while on ``meta`` attention
# decomposes into matmuls: real forwards are counted with eager (matmul) attention.

def test_meta_parts_add_up_to_a_real_forward_and_generate():
    answer_tokens = 4
    qwen = build_random_qwen_vl(TINY_QWEN2_VL, answer_tokens)
    qwen.model.set_attn_implementation("eager")
    inputs, _ = qwen._encode([qwen._conversation(query.image(), query.crs_question())])
    meta_model = build_mllm(TINY_QWEN2_VL)
    grid = tuple(inputs["image_grid_thw"][0].tolist())
    language = LanguageModelCounter(meta_model)
    prefill = vision_flops(meta_model, grid) + language.prefill(inputs["input_ids"].shape[1])
    decode = language.decode(answer_tokens - 1)

    assert count_flops(lambda: qwen.model(**inputs, logits_to_keep=1)) == prefill
    generated = []
    assert count_flops(lambda: generated.append(qwen.model.generate(**inputs, max_new_tokens=answer_tokens))) \
        == prefill + decode
    # min_new_tokens pins the answer length whatever the random weights prefer.
    assert generated[0].shape[1] - inputs["input_ids"].shape[1] == answer_tokens


def test_windowed_vision_counts_like_a_real_forward():
    torch.manual_seed(0)
    real = build_mllm(TINY_QWEN2_5_VL, "cpu")
    real.set_attn_implementation("eager")
    grid = (1, 8, 12)
    pixels = torch.randn(8 * 12, 3 * 2 * 14 * 14)
    expected = count_flops(lambda: real.model.visual(pixels, grid_thw=torch.tensor([grid])))
    assert vision_flops(build_mllm(TINY_QWEN2_5_VL), grid) == expected


def test_detector_counts_like_a_real_forward():
    torch.manual_seed(0)
    real = build_detector(TINY_DETECTOR, "cpu")
    real.set_attn_implementation("eager")
    size, tokens = (96, 128), 9
    inputs = dict(pixel_values=torch.randn(1, 3, *size), pixel_mask=torch.ones(1, *size, dtype=torch.long),
                  input_ids=torch.randint(5, 90, (1, tokens)), attention_mask=torch.ones(1, tokens, dtype=torch.long),
                  token_type_ids=torch.zeros(1, tokens, dtype=torch.long))
    assert detector_flops(build_detector(TINY_DETECTOR), size, tokens).total == count_flops(lambda: real(**inputs))


def test_a_cached_prefix_is_attended_to_but_not_recomputed():
    language = LanguageModelCounter(build_mllm(TINY_QWEN2_VL))
    fresh, continued, whole = language.prefill(10), language.prefill(10, past=50), language.prefill(60)
    assert fresh < continued < whole


def test_extraction_modes_cost_less_the_more_is_shared():
    modes = {mode.name: mode for mode in flops.count_extraction(LanguageModelCounter(build_mllm(TINY_QWEN2_VL)))}
    uncached, cached = modes["mllm, uncached"], modes["mllm, cached prefix"]
    batched = modes[f"mllm, {flops.BATCH} per prompt, cached prefix"]
    assert uncached.flops > cached.flops > batched.flops > 0
    assert cached.prompt_tokens < uncached.prompt_tokens and cached.answer_tokens == uncached.answer_tokens
    assert modes["heuristic"].flops == modes["openai:MODEL, 1 per prompt"].flops == 0
    assert modes["openai:MODEL, 1 per prompt"].prompt_tokens == uncached.prompt_tokens
    assert len(query.batch_expressions(flops.BATCH)) == flops.BATCH


def test_the_extraction_benchmark_reports_agreement(tmp_path):
    result = run.main(["--only", "extraction", "--out", str(tmp_path)])["extraction"]
    assert set(result["agreement"]) == {"table", "held out"} and result["agreement"]["table"]["all"] >= 0.95
    assert json.loads((tmp_path / "extraction.json").read_text())["agreement"] == result["agreement"]


def test_decode_needs_a_prefill():
    with pytest.raises(RuntimeError, match="prefill"):
        LanguageModelCounter(build_mllm(TINY_QWEN2_VL)).decode(1)


# ---------------------------------------------------------------- composition and targets

DETECTOR = DetectorFlops("det", router=1.0, specialist=2.0, backbone=0.5)
MLLM = MllmFlops("mllm", vision=4.0, ground_prefill=10.0, ground_decode=2.0, focus_prefill=11.0, focus_decode=2.0,
                 crs_prefill=12.0, extract_prefill=3.0, extract_decode=1.0)


def test_path_composition_formula():
    paths = path_flops(DETECTOR, MLLM, level1_share=0.5)
    assert paths["mllm"] == 12.0 and paths["specialist"] == 2.0 and paths["crs"] == 14.0
    assert paths["sfa (no extraction)"] == 1.0 + 0.5 * (2.0 - 0.5) + 0.5 * 13.0
    # Router and specialist share one backbone pass in sfa+crs.
    assert paths["sfa+crs (no extraction)"] == 1.0 + 2.0 - 0.5 + 0.5 * 12.0
    assert paths["sfa"] == paths["sfa (no extraction)"] + 4.0
    assert ratios_to_mllm(paths)["sfa"] == pytest.approx(12.25 / 12.0)
    assert path_flops(DETECTOR, MLLM, 1.0)["sfa (no extraction)"] == 2.5  # everything on the fast path
    with pytest.raises(ValueError, match="Level-1 share"):
        path_flops(DETECTOR, MLLM, 1.5)


def test_extraction_cost_replaces_the_default_and_the_goals_are_checked():
    cheap = ExtractionMode("cheap", "test", flops=1.0, prompt_tokens=5, answer_tokens=2)
    assert path_flops(DETECTOR, MLLM, 0.5, extraction=1.0)["sfa"] == path_flops(DETECTOR, MLLM, 0.5)["sfa"] - 3.0
    targets = extraction_targets({"MM-GDINO-L": DETECTOR, "MM-GDINO-T": DETECTOR}, MLLM, cheap, 0.5)
    assert [t.limit for t in targets] == [1.0, 0.6]
    assert targets[0].value == pytest.approx((8.25 + 1.0) / 12.0) and targets[0].met and not targets[1].met


def test_targets_report_values_and_verdicts():
    targets = {t.name: t for t in check_targets(DETECTOR, MLLM, level1_share=0.5)}
    crs = targets["CRS / grounding prefill <= 1.1"]
    assert crs.value == pytest.approx(1.2) and not crs.met
    sfa = targets["sfa (no extraction) / MLLM-only <= 55%"]
    assert sfa.value == pytest.approx(8.25 / 12.0) and not sfa.met  # 1 + 0.5 * (2 - 0.5) + 0.5 * 13
    cheap = MllmFlops("big", 40.0, 100.0, 20.0, 101.0, 20.0, 100.0, 3.0, 1.0)
    assert all(t.met for t in check_targets(DETECTOR, cheap, level1_share=0.9))


# ---------------------------------------------------------------- orchestration and the runner

def test_orchestration_overhead_for_every_strategy(tmp_path):
    results = run.main(["--only", "orchestration", "--queries", "5", "--out", str(tmp_path)])["orchestration"]
    strategies = results["strategies"]
    assert set(strategies) == {"specialist", "mllm", "sfa", "crs", "sfa+crs"}
    assert all(r["median_ms"] > 0 and sum(r["paths"].values()) == 5 for r in strategies.values())
    assert set(strategies["sfa"]["paths"]) == {"specialist", "mllm"}  # both levels are exercised
    written = json.loads((tmp_path / "orchestration.json").read_text())
    assert written["strategies"].keys() == strategies.keys() and written["machine"]["cpu_cores"] > 0


def test_serving_overhead_is_measured_over_http(tmp_path):
    result = run.main(["--only", "serving", "--requests", "5", "--clients", "2", "--out", str(tmp_path)])["serving"]
    assert result["median_ms"] > 0 and result["requests_per_s"] > 0 and result["requests"] == 5
    assert json.loads((tmp_path / "serving.json").read_text())["clients"] == 2


def test_instant_plug_ins_answer_what_the_agent_expects():
    detector = orchestration.InstantDetector()
    assert len(detector.detect(None, query.target_phrase())) == 1
    assert len(detector.detect(None, query.EXPRESSION)) == 5
    probabilities = orchestration.InstantMllm().select(None, "x", detector.detect(None, "x"), allow_none=True)
    assert len(probabilities) == 6 and probabilities.sum() == pytest.approx(1.0)


def test_timed_runs_take_turns():
    order = []
    times = timed_runs({"a": lambda: order.append("a"), "b": lambda: order.append("b")}, 2, torch.device("cpu"))
    assert order == ["a", "b", "a", "b", "a", "b"] and all(len(runs) == 2 for runs in times.values())


def test_the_batching_benchmark_measures_remote_and_served_queries():
    from benchmarks import batching

    remote = batching.remote(latency_ms=20, count=4)
    served = batching.served(clients=2, requests=4)
    assert set(remote) == {1, 8} and all(value > 0 for value in remote.values())
    assert set(served) == {"off", "on"} and all(value > 0 for value in served.values())


def test_the_crs_modes_benchmark_runs_every_mode():
    import dataclasses

    from benchmarks import crs_modes
    from benchmarks.walltime import MID_SIZE

    small = dataclasses.replace(
        # head_dim 128, as the M-RoPE sections of the real checkpoints need
        MID_SIZE, text={**MID_SIZE.text, "hidden_size": 256, "intermediate_size": 256, "num_hidden_layers": 1,
                        "num_attention_heads": 2, "num_key_value_heads": 1, "vocab_size": 1024},
        vision={**MID_SIZE.vision, "depth": 1, "embed_dim": 32, "num_heads": 4, "hidden_size": 256})
    results = crs_modes.measure(queries=2, device="cpu", dtype="auto", spec=small)
    assert set(results) == set(crs_modes.MODES) and all(qps > 0 for qps in results.values())


def test_every_benchmark_option_lives_beside_the_others_in_one_command(capsys):
    # benchmarks.run gathers every benchmark's options in one parser: two with one name cannot both be set
    with pytest.raises(SystemExit) as exit_:
        run.main(["--help"])
    assert exit_.value.code == 0
    assert "--crs-queries" in capsys.readouterr().out


def test_the_calibration_benchmark_times_the_exact_search(tmp_path):
    import argparse

    from benchmarks import calibration

    payload = calibration.run(argparse.Namespace(calibration_samples=300, out=tmp_path))
    assert payload["exact"] >= payload["quantile_grid"] and payload["exact"] >= payload["before"]
    assert payload["exact_seconds"] > 0 and payload["folds"] == 5 and (tmp_path / "calibration.json").exists()
