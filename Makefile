# Two commands a newcomer needs: `make demo` (the main job) and `make test`. Both bootstrap .venv themselves.
PY := .venv/bin/python
.PHONY: venv demo test lint bench clean

venv:
	@bash scripts/bootstrap.sh

demo: venv
	$(PY) -m omnigpt demo

test: venv
	$(PY) -m ruff check src tests benchmarks examples
	$(PY) -m pytest -q

lint: venv
	$(PY) -m ruff check src tests benchmarks examples
	$(PY) -m ruff format --check src tests benchmarks examples

bench: venv
	$(PY) benchmarks/decode.py
	$(PY) benchmarks/train.py

clean:
	rm -rf .venv runs build *.egg-info
