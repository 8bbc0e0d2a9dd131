# The two commands a newcomer needs: `make demo` and `make test`.
VENV ?= .venv
BIN := $(VENV)/bin
PYTEST_ARGS ?=
# AdamW vs l2-Adam at two depths (1 and 8 hidden layers): the update-magnitude comparison of the demo.
UPDATE_CKPTS := digits-mlp-adamw-e40.pt digits-mlp-l2-adam-e40.pt digits-mlp-depth8-adamw-e40.pt \
	digits-mlp-depth8-l2-adam-e40.pt

.PHONY: venv demo test check checkpoints clean-venv

venv:
	@bash scripts/setup-venv.sh

## The main job on the embedded default: train the digits zoo if missing, then Table I, the
## update-magnitude histograms and the curvature over training into reports/.
demo: venv
	@$(MAKE) --no-print-directory checkpoints
	$(BIN)/wdbound table checkpoints/ --out reports/
	$(BIN)/wdbound updates $(addprefix checkpoints/,$(UPDATE_CKPTS)) --per-layer --json reports/updates.json \
		--plot reports/updates-depth.png
	$(BIN)/wdbound curves checkpoints/ --plot reports/curves.png --json reports/curves.json

## Every test, slow end-to-end ones included. "No tests ran" (exit 5) fails.
test: venv
	$(BIN)/python -m pytest $(PYTEST_ARGS)

## Regression-check the bounds of the shipped zoo against the committed baseline (exit 1 on a regression).
JUNIT ?= $(or $(TMPDIR),/tmp)/wdbound-check.xml
check: venv
	$(BIN)/wdbound check --baseline reports/baseline.json --table reports/table1.json --junit $(JUNIT)

## Reproduce the shipped digits zoo (skips checkpoints that already exist).
checkpoints: venv
	@bash scripts/train-zoo.sh

clean-venv:
	rm -rf $(VENV)
