"""Real tokenizers for the tests: Qwen2-VL's BPE and bert-base-uncased's WordPiece.

Both are derived from the vocabularies llama.cpp ships (``tests/fixtures/vocab``; how they
were assembled is in ``assemble.py`` there), so the code is checked against the ids real
checkpoints use, not only against the hand-built tiny tokenizers.
"""

from __future__ import annotations

import lzma
import shutil
from pathlib import Path

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "vocab"
CASE_SEPARATOR = "\n__ggml_vocab_test__\n"


def unpack_qwen2_vl_tokenizer(folder: Path) -> Path:
    """Write the Qwen2-VL tokenizer files into ``folder`` (for ``from_pretrained``); returns it."""
    folder.mkdir(parents=True, exist_ok=True)
    source = FIXTURES / "qwen2_vl"
    for file in source.iterdir():
        if file.name == "tokenizer.json.xz":
            (folder / "tokenizer.json").write_bytes(lzma.decompress(file.read_bytes()))
        elif not file.name.startswith("reference"):
            shutil.copy(file, folder / file.name)
    return folder


def bert_vocab() -> dict[str, int]:
    """bert-base-uncased's vocabulary, token -> id."""
    tokens = lzma.decompress((FIXTURES / "bert_base_uncased" / "vocab.txt.xz").read_bytes()).decode("utf-8")
    return {token: index for index, token in enumerate(tokens.split("\n")[:-1])}


def bert_tokenizer():
    """A ``BertTokenizerFast`` with bert-base-uncased's vocabulary (lower-casing, as Grounding DINO's)."""
    from transformers import BertTokenizerFast

    # vocab_file= silently gives an empty vocabulary in transformers 5; a dict does not.
    return BertTokenizerFast(vocab=bert_vocab(), do_lower_case=True)


def reference_cases(name: str) -> list[tuple[str, list[int]]]:
    """llama.cpp's reference tokenisations of vocabulary ``name`` ("qwen2_vl" or "bert_base_uncased")."""
    folder = FIXTURES / name
    texts = (folder / "reference.inp").read_text(encoding="utf-8").split(CASE_SEPARATOR)
    texts[-1] = texts[-1].removesuffix("\n__ggml_vocab_test__\n").removesuffix("\n__ggml_vocab_test__")
    lines = (folder / "reference.out").read_text(encoding="utf-8").split("\n")
    ids = [[int(v) for v in line.split()] for line in lines]
    return list(zip(texts, ids[: len(texts)]))
