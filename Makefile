# umbif: every target sets itself up. `make demo` runs the newest end-to-end path, `make test` the suite.
# A GPU user installs their own CUDA build of torch into .venv first and runs `make venv TORCH=`
# (empty TORCH keeps the installed torch), see README.

PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
TORCH ?= torch==2.13.0
STAMP := $(VENV)/.umbif-installed
SAMPLE ?= ../shared/data/upenn-gbm-sample
DEMO := work/demo

.PHONY: venv test lint demo clean

venv: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(if $(TORCH),$(BIN)/pip install --disable-pip-version-check -q "$(TORCH)")
	$(BIN)/pip install --disable-pip-version-check -q -c constraints.txt -e ".[dev]"
	touch $@

lint: venv
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

test: lint
	$(BIN)/pytest -q

# Demo on the real UPENN-GBM exam: files -> manifest -> validation -> summary -> exam cache.
demo: venv
	@test -d "$(SAMPLE)" || { echo "no exam folder at $(SAMPLE); run 'make demo SAMPLE=/path/to/exam_folder'"; exit 1; }
	rm -rf $(DEMO) && mkdir -p $(DEMO)/data
	cp -r "$(SAMPLE)" $(DEMO)/data/
	$(BIN)/umbif ingest folder $(DEMO)/data --site demo --out $(DEMO)/manifest.csv
	$(BIN)/umbif manifest validate $(DEMO)/manifest.csv
	$(BIN)/umbif manifest summary $(DEMO)/manifest.csv
	$(BIN)/umbif preprocess $(DEMO)/manifest.csv --out $(DEMO)/cache
	$(BIN)/umbif cache info $(DEMO)/cache --verify
	$(BIN)/umbif cache show $(DEMO)/cache --out $(DEMO)/exam.png

clean:
	rm -rf work .pytest_cache
