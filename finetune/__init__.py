"""Instruction tuning of the MLLM for Candidate Region Selection (CRS) with PEFT/LoRA.

- ``samples``: the CRS sample JSONL format, its chat turns, LLaMA-Factory export;
- ``collate``: tokens, images and answer-only labels of a batch;
- ``train``: ``TrainConfig`` and ``train(config)``, LoRA on the language model;
- ``trainer``: transformers' ``Trainer`` with the answer-only loss and option accuracy;
- ``history``: the loss log's plot;
- ``cli``, ``build_cli``: ``agent-cli finetune`` and ``finetune-data`` (also ``python -m finetune.cli``).
"""
