"""Instruction tuning of the MLLM for Candidate Region Selection (CRS) with PEFT/LoRA."""
