"""Instruction tuning of the MLLM for Candidate Region Selection (CRS) with PEFT/LoRA.

- ``samples``: the CRS sample JSONL format, its chat turns, LLaMA-Factory export;
- ``collate``: tokens, images and answer-only labels of a batch;
- ``train``: ``TrainConfig`` and ``train(config)``, LoRA on the language model;
- ``checkpoints`` / ``history``: resumable state, loss log and plot;
- ``cli``: ``agent-cli finetune`` / ``python -m finetune.train``.
"""
