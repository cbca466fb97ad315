# mmslab: one command each, on a fresh machine (see README.md).
#   make demo   set up .venv/ and run the main job on the embedded synthetic data
#   make test   set up .venv/ and run the whole test suite (what CI runs)
.PHONY: setup demo test

setup:
	bash tools/setup_env.sh

demo: setup
	bash tools/run_demo.sh

test: setup
	.venv/bin/python -m pytest -q --durations=15
