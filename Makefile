# agentcomm — every task a newcomer or CI needs. `make run` and `make test` install first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install run test check proto proto-check bench screenshots clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

## Starts server, reference broker, demo agents and web UI on the in-process bus.
run: install
	$(BIN)/agentcomm dev

test: install
	$(BIN)/pytest

check: install proto-check
	$(BIN)/ruff format --check src tests benchmarks
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/mypy

## Regenerates the gRPC stubs in src/agentcomm/generated from protos/.
proto: install
	PATH=$(BIN):$$PATH $(BIN)/python -m grpc_tools.protoc -Iagentcomm/generated=protos \
		--python_out=src --grpc_python_out=src --mypy_out=src --mypy_grpc_out=src protos/*.proto

## Fails when the committed stubs differ from a fresh generation.
proto-check: install
	@tmp=$$(mktemp -d) && \
	PATH=$(BIN):$$PATH $(BIN)/python -m grpc_tools.protoc -Iagentcomm/generated=protos \
		--python_out=$$tmp --grpc_python_out=$$tmp --mypy_out=$$tmp --mypy_grpc_out=$$tmp \
		protos/*.proto >/dev/null && \
	diff -r -x __init__.py -x __pycache__ $$tmp/agentcomm/generated src/agentcomm/generated \
		|| { echo "gRPC stubs are stale: run 'make proto' and commit the result"; rm -rf $$tmp; exit 1; }; \
	rm -rf $$tmp

bench: install
	$(BIN)/pip install --quiet -e '.[dev,bench]'
	$(BIN)/agentcomm bench all
	$(BIN)/python -m agentcomm.bench.compare benchmarks/results/baseline benchmarks/results --out docs/benchmarks

## Regenerates docs/screenshots/*.png from the real page (needs Debian's chromium).
screenshots: install
	$(BIN)/python scripts/screenshots.py

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache
