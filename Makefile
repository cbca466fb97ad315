# mmslab: one command each, on a fresh machine (see README.md).
#   make demo         set up .venv/ and run the main job on the embedded synthetic data
#   make test         set up .venv/ with the deploy extra and run the whole test suite (CI)
#   make deploy-demo  after `make demo`: the demo detector, folded, through mmdeploy to
#                     ONNX Runtime; box / mask AP of ONNX Runtime vs PyTorch
.PHONY: setup setup-deploy demo test deploy-demo

DEMO_WORK_DIR ?= work_dirs/demo

setup:
	bash tools/setup_env.sh

# the deploy extra (onnxruntime, onnx, mmdeploy; pyproject.toml) on top of the set-up
setup-deploy:
	MMSLAB_EXTRAS=deploy bash tools/setup_env.sh

demo: setup
	bash tools/run_demo.sh

test: setup-deploy
	.venv/bin/python -m pytest -q --durations=15

deploy-demo: setup-deploy
	@test -f $(DEMO_WORK_DIR)/last_checkpoint || { echo "no trained demo in $(DEMO_WORK_DIR): run make demo first"; exit 1; }
	.venv/bin/python tools/mmdeploy_ort.py configs/demo/mask_rcnn_slab_pvt_demo.py \
		"$$(cat $(DEMO_WORK_DIR)/last_checkpoint)" --work-dir $(DEMO_WORK_DIR)/ort \
		--max-ap-diff 0.01
