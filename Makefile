# The README's commands. Everything installs from this repository's own files into .venv.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
PROTOS := $(shell find proto -name '*.proto')
GEN_STAMP := gen/.stamp

.PHONY: install proto chromium demo test unit lint bench up dev-up dev-down clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check -e '.[dev]'
	touch $(STAMP)

# gRPC code is generated into the ignored folder gen/, never edited or committed.
proto: $(GEN_STAMP)

$(GEN_STAMP): $(STAMP) $(PROTOS)
	rm -rf gen && mkdir -p gen
	$(BIN)/python -m grpc_tools.protoc -Iproto --python_out=gen --grpc_python_out=gen --pyi_out=gen $(PROTOS)
	touch $(GEN_STAMP)

# Debian's Chromium, for the report page's browser test and the demo's screenshot (Playwright drives it; it never
# downloads a browser of its own): installed where missing when we may (root with apt-get), else said how.
chromium:
	@command -v chromium >/dev/null 2>&1 || [ -x /usr/bin/chromium ] || \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing Debian's chromium (apt-get)"; \
	    DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null; \
	  else \
	    echo "Chromium is missing: sudo apt-get install -y chromium chromium-driver (the browser test needs it)"; \
	  fi

demo: proto chromium
	$(BIN)/mieux demo

test: proto chromium
	$(BIN)/ruff check services tests bench deploy
	$(BIN)/pytest -q

unit: proto
	$(BIN)/pytest -q tests/unit

lint: proto
	$(BIN)/ruff check services tests bench deploy
	$(BIN)/ruff format --check services tests bench deploy

# make up REPLICAS=2: two processes per service (one relay active each, commands balanced over both)
REPLICAS ?= 1
up: proto
	$(BIN)/mieux up --replicas $(REPLICAS)

bench: proto
	$(BIN)/python -m bench

dev-up: proto
	$(BIN)/mieux dev up

dev-down:
	$(BIN)/mieux dev down

clean:
	rm -rf gen .mieux
