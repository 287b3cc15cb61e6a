# Two entry points a new user needs: `make demo` and `make test`. Both create the virtualenv
# on first use, so a fresh machine with only Python 3.11 and make is enough.
#
# pyproject.toml holds lower bounds; constraints.txt pins the versions this code was tested
# with, so a fresh install keeps working when a dependency's next major release breaks its API.
# `make constraints` refreshes the pins from the current virtualenv after a green test run.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
SPARK_STAMP := $(VENV)/.installed-spark
BROWSER_STAMP := $(VENV)/.installed-browser

.PHONY: demo test test-spark lint bench docs install constraints clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c constraints.txt -e ".[dev]"
	touch $(STAMP)

# The Spark tests need pyspark (the spark extra) and Java 17+; `make test` fails without Java.
$(SPARK_STAMP): $(STAMP)
	$(BIN)/pip install --quiet -c constraints.txt -e ".[dev,spark]"
	touch $(SPARK_STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/propensity demo

lint: $(STAMP)
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .
	$(BIN)/lint-imports

# The report and journey tests render pages in a headless Chromium: the system's, installed from
# Debian's packages when missing (as root), else Playwright's own build.
$(BROWSER_STAMP): $(STAMP)
	command -v chromium >/dev/null || command -v chromium-browser >/dev/null || \
	  { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && apt-get update -qq && apt-get install -y -qq chromium; } || \
	  $(BIN)/python -m playwright install chromium
	touch $(BROWSER_STAMP)

# The default suite (spark tests excluded by pyproject's addopts), then the Spark group on its
# own: one JVM, one process. Without Java the Spark group would be skipped: CI must fail instead.
test: lint $(SPARK_STAMP) $(BROWSER_STAMP)
	@command -v java >/dev/null || { echo "make test: Java 17+ is required for the Spark group (install a JDK, e.g. apt-get install openjdk-17-jre-headless)"; exit 1; }
	$(BIN)/pytest -n 2 --dist loadgroup -q
	PROPENSITY_REQUIRE_SPARK=1 $(BIN)/pytest -p no:xdist -q -m spark tests

# Spark in local mode against DuckDB alone (needs Java 17+).
test-spark: $(SPARK_STAMP)
	$(BIN)/pytest -p no:xdist -q -m spark tests

bench: $(STAMP)
	$(BIN)/python benchmarks/generate.py
	$(BIN)/python benchmarks/features.py

# The README's generated parts: the config reference (from the pydantic models) and the
# pictures of the demo's report (runs the demo first when there is none).
docs: $(STAMP)
	test -f demo_output/demo.json || $(BIN)/propensity demo
	$(BIN)/propensity docs config-reference --write README.md
	$(BIN)/propensity docs report-images demo_output/reports/upsell.html --out docs/images --readme README.md

constraints: $(STAMP)
	$(BIN)/pip freeze --exclude-editable --exclude propensity > constraints.txt

clean:
	rm -rf $(VENV) mlflow.db mlruns mlartifacts demo_output .pytest_cache
