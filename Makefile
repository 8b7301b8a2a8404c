# Two entry points for a fresh clone: `make run` opens the app, `make test`
# runs the headless test suite on the CPU. Both create .venv when missing.
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: setup run test test-fork

setup:
	@bash scripts/setup.sh

run: setup
	$(VENV)/bin/hydra-chat prepare
	$(VENV)/bin/hydra-chat

# pytest exits with 5 when it collected no tests; that is a failure here.
PYTEST := CUDA_VISIBLE_DEVICES= HYDRA_DEVICE=cpu $(PY) -m pytest -q -p no:cacheprovider

# NOTE: these tests os.fork() a child (crash and full-disk harnesses, the
# lock) from a process whose other threads hold locks, and the child can
# deadlock; in a full run one hung for over ten minutes. Until they start
# their children with subprocess instead, they run only in `make test-fork`.
FORK_TESTS := tests/test_crash_consistency.py tests/test_ingest_memory.py \
	tests/test_memory_lock.py tests/test_memory_state_file.py

test: setup
	@$(PYTEST) $(addprefix --ignore=,$(FORK_TESTS)) $(PYTEST_ARGS); \
	rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "error: pytest collected no tests" >&2; exit 1; fi; \
	exit $$rc

test-fork: setup
	@timeout 1200 $(PYTEST) $(FORK_TESTS) $(PYTEST_ARGS)
