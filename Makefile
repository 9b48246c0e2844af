# mmaudit: `make demo` and `make test` are all a new machine needs.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install test test-browser demo lint sample bench clean

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev,dicom]'
	touch $(STAMP)

test: install
	$(BIN)/python -m pytest tests

# Installs Debian's Chromium (needs root and the package mirror), then runs the browser test.
test-browser: install
	command -v chromium >/dev/null && command -v chromedriver >/dev/null || (apt-get update -qq && apt-get install -y -qq chromium chromium-driver)
	$(BIN)/python -m pytest tests/report/test_browser.py

# Stage lines and bars (a line per stage in a log), then where the report is and how to run
# mmaudit yourself: the command lives in .venv, which make does not activate for your shell.
demo: install
	$(BIN)/mmaudit run configs/sample.yaml -o report --fail-on never
	@echo ""
	@echo "The report: open report/index.html in a browser (summary: report/summary.md)."
	@echo "To run mmaudit yourself: source .venv/bin/activate, then mmaudit --help"
	@echo "(or call it by path: .venv/bin/mmaudit run configs/sample.yaml -o report)."

lint: install
	$(BIN)/ruff check mmaudit tests benchmarks scripts
	$(BIN)/ruff format --check mmaudit tests benchmarks scripts

# Rebuild sample_data/ (images, tokenizer, both checkpoints) together from scratch: about a minute
# on 2 CPU cores (65 s wall, training 27 s + 28 s; build_summary.json records each build).
sample: install
	$(BIN)/python -m mmaudit.sample sample_data

bench: install
	$(BIN)/python benchmarks/saliency_speed.py
	$(BIN)/python benchmarks/ablation_speed.py --check
	$(BIN)/python benchmarks/attribution_speed.py
	$(BIN)/python benchmarks/embedding_speed.py

clean:
	rm -rf report .pytest_cache

# Planted-shortcut detection benchmark (about an hour in one process on 2 CPU cores); `--quick` for a smoke run.
.PHONY: bench-detection
bench-detection: install
	$(BIN)/python -m benchmarks.detection.run --out bench_detection --force
