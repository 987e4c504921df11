# `make test` and `make demo` set up .venv on first use, then run.
VENV ?= .venv
PYTHON := $(VENV)/bin/python
# This machine serves these torch wheels from local disk; elsewhere pip downloads them.
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
DEMO_IMAGE ?= examples/images/snow.png
DEMO_TEXT ?= the long snowboard to the right of the skis
# Empty: models that fit where it runs (examples/demo.py says which and why).
DEMO_DETECTOR ?=
DEMO_MLLM ?=

.PHONY: install test lint bench demo clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(PYTHON) || python3 -m venv $(VENV)
	$(PYTHON) -m pip install --quiet --upgrade pip
	$(PYTHON) -m pip install --quiet $(TORCH_SPEC)
	$(PYTHON) -m pip install --quiet -e '.[dev]'
	touch $@

test: install
	$(PYTHON) -m pytest -q

lint: install
	$(VENV)/bin/ruff check agent tools finetune prompts tests examples benchmarks

bench: install
	$(PYTHON) -m benchmarks.run --out outputs/bench

demo: install
	mkdir -p outputs
	$(PYTHON) -m examples.demo --image $(DEMO_IMAGE) --text "$(DEMO_TEXT)" --save outputs/demo.png \
		$(if $(DEMO_DETECTOR),--detector "$(DEMO_DETECTOR)") $(if $(DEMO_MLLM),--mllm "$(DEMO_MLLM)")

clean:
	rm -rf $(VENV) outputs .pytest_cache
