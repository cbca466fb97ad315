# mmslab: one command each, on a fresh machine (see README.md).
#   make demo               set up the default stack (.venv/) and run the main job on the
#                           embedded synthetic data; `make demo STACK=classic` on the other
#   make test               set up both tested stacks with the deploy extra and run the whole
#                           test suite on each, both reported even if one fails (what CI runs)
#   make test-current       one stack only (likewise test-classic)
#   make deploy-demo        after `make demo`: the demo detector, folded, through mmdeploy to
#                           ONNX Runtime; box / mask AP of ONNX Runtime vs PyTorch
# STACK: current (default: torch 2.14.1) or classic (torch 2.5.1); requirements/<STACK>.txt.
.PHONY: setup setup-deploy demo test test-current test-classic deploy-demo

STACK ?= current
VENV_current := .venv
VENV_classic := .venv-classic
VENV = $(VENV_$(STACK))
DEMO_WORK_DIR ?= work_dirs/demo
# -n auto --dist loadfile: one pytest-xdist worker per core, a test module's tests on one
# worker (tests/conftest.py: the e2e modules share their training runs)
PYTEST_ARGS ?= -q --durations=15 -n auto --dist loadfile

setup:
	MMSLAB_STACK=$(STACK) bash tools/setup_env.sh

# the deploy extra (onnxruntime, onnx, mmdeploy; pyproject.toml) on top of the set-up
setup-deploy:
	MMSLAB_STACK=$(STACK) MMSLAB_EXTRAS=deploy bash tools/setup_env.sh

demo: setup
	PYTHON=$(VENV)/bin/python bash tools/run_demo.sh

# both stacks, each set up and tested even when the other fails; one summary at the end
test:
	PYTEST_ARGS='$(PYTEST_ARGS)' bash tools/test_stacks.sh current classic

test-current test-classic: test-%:
	PYTEST_ARGS='$(PYTEST_ARGS)' bash tools/test_stacks.sh $*

deploy-demo: setup-deploy
	@test -f $(DEMO_WORK_DIR)/last_checkpoint || { echo "no trained demo in $(DEMO_WORK_DIR): run make demo first"; exit 1; }
	$(VENV)/bin/python tools/mmdeploy_ort.py configs/demo/mask_rcnn_slab_pvt_demo.py \
		"$$(cat $(DEMO_WORK_DIR)/last_checkpoint)" --work-dir $(DEMO_WORK_DIR)/ort \
		--max-ap-diff 0.01
