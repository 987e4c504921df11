"""The README's Python examples run as written (with tiny checkpoints in place of Hub ids)."""

import re
from pathlib import Path

import pytest

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()


def python_blocks():
    return re.findall(r"```python\n(.*?)```", README, flags=re.S)


def test_readme_has_python_examples():
    assert len(python_blocks()) >= 3


@pytest.mark.parametrize("index", range(len(python_blocks())))
def test_python_example_runs(index, tiny_mm_grounding_dino, tiny_owlv2, tiny_florence2, monkeypatch):
    monkeypatch.chdir(Path(__file__).resolve().parents[1])
    code = python_blocks()[index]
    for hub_id, folder in ((r"openmmlab-community/[^\"]+", tiny_mm_grounding_dino), (r"google/owlv2-[^\"]+", tiny_owlv2),
                           (r"florence-community/[^\"]+", tiny_florence2)):
        code = re.sub(f'"{hub_id}"', repr(str(folder)), code)
    exec(compile(code, f"README.md block {index}", "exec"), {})
