# The two commands a newcomer needs: `make demo` and `make test`.
VENV ?= .venv
BIN := $(VENV)/bin
PYTEST_ARGS ?=

.PHONY: venv demo test checkpoints clean-venv

venv:
	@bash scripts/setup-venv.sh

## The main job on the embedded default: train the digits zoo if missing, then Table I and the
## update-magnitude histograms into reports/.
demo: venv
	@$(MAKE) --no-print-directory checkpoints
	$(BIN)/wdbound table checkpoints/ --out reports/

## Every test, slow end-to-end ones included. "No tests ran" (exit 5) fails.
test: venv
	$(BIN)/python -m pytest $(PYTEST_ARGS)

## Reproduce the shipped digits zoo (skips checkpoints that already exist).
checkpoints: venv
	@bash scripts/train-zoo.sh

clean-venv:
	rm -rf $(VENV)
