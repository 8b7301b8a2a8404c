# Two entry points for a fresh clone: `make run` opens the app, `make test`
# runs the headless test suite on the CPU. Both create .venv when missing.
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: setup run test

setup:
	@bash scripts/setup.sh

run: setup
	$(VENV)/bin/hydra-chat prepare
	$(VENV)/bin/hydra-chat

# pytest exits with 5 when it collected no tests; that is a failure here.
PYTEST := CUDA_VISIBLE_DEVICES= HYDRA_DEVICE=cpu $(PY) -m pytest -q -p no:cacheprovider

test: setup
	@$(PYTEST) $(PYTEST_ARGS); \
	rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "error: pytest collected no tests" >&2; exit 1; fi; \
	exit $$rc
