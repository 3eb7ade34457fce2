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
EXAMS ?= 120
WORKERS ?= 2

.PHONY: venv test lint demo demo-quick demo-data demo-real clean

venv: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(if $(TORCH),$(BIN)/pip install --disable-pip-version-check -q "$(TORCH)")
	$(BIN)/pip install --disable-pip-version-check -q -c constraints.txt -e ".[dev]"
	# pyradiomics (radiomics baseline) has only a source package: build it against the installed numpy
	$(BIN)/pip install --disable-pip-version-check -q -c constraints.txt versioneer wheel
	$(BIN)/pip install --disable-pip-version-check -q -c constraints.txt --no-build-isolation pyradiomics
	touch $@

lint: venv
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

test: lint
	$(BIN)/pytest -q

# The main job in one command: synthetic cohort -> cache -> pretraining (UMBIF + SSL baselines) ->
# every method on the same folds -> work/demo/benchmark/report/report.html (sized for 15 min on 2 CPU cores).
demo: venv
	$(BIN)/umbif demo --out $(DEMO)

demo-quick: venv
	$(BIN)/umbif demo --quick --out $(DEMO)-quick

# The data path alone: generate -> validate -> summary -> exam cache -> pictures.
# Reruns reuse what is done; `make demo-data EXAMS=400` for the full default cohort.
demo-data: venv
	$(BIN)/umbif synth --out $(DEMO)/data/synth --exams $(EXAMS) --workers $(WORKERS) --preview
	$(BIN)/umbif manifest validate $(DEMO)/data/synth/manifest.csv
	$(BIN)/umbif manifest summary $(DEMO)/data/synth/manifest.csv
	$(BIN)/umbif preprocess $(DEMO)/data/synth/manifest.csv --out $(DEMO)/data/cache --workers $(WORKERS)
	$(BIN)/umbif cache info $(DEMO)/data/cache --verify
	$(BIN)/umbif cache show $(DEMO)/data/cache --out $(DEMO)/data/exam.png
	@echo "look at $(DEMO)/data/synth/preview.png, $(DEMO)/data/exam.png and $(DEMO)/data/synth/cohort_card.md"

# The same path on a real exam folder (default: the UPENN-GBM sample next to this checkout).
demo-real: venv
	@test -d "$(SAMPLE)" || { echo "no exam folder at $(SAMPLE); run 'make demo-real SAMPLE=/path/to/exam_folder'"; exit 1; }
	rm -rf $(DEMO)/real && mkdir -p $(DEMO)/real/data
	cp -r "$(SAMPLE)" $(DEMO)/real/data/
	$(BIN)/umbif ingest folder $(DEMO)/real/data --site demo --out $(DEMO)/real/manifest.csv
	$(BIN)/umbif manifest validate $(DEMO)/real/manifest.csv
	$(BIN)/umbif manifest summary $(DEMO)/real/manifest.csv
	$(BIN)/umbif preprocess $(DEMO)/real/manifest.csv --out $(DEMO)/real/cache
	$(BIN)/umbif cache info $(DEMO)/real/cache --verify
	$(BIN)/umbif cache show $(DEMO)/real/cache --out $(DEMO)/real/exam.png

clean:
	rm -rf work .pytest_cache
