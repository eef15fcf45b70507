# brug: two commands on a fresh Debian machine.
#   make demo   installs what is missing and runs the embedded default (virtual cards, three networks)
#   make test   installs what is missing and runs lint, type checks and the whole suite
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

# Debian packages the gateway, the suite and the demo need (audio server, PortAudio, codecs, RTP peers).
DEB_PACKAGES := libportaudio2 pulseaudio pulseaudio-utils libasound2-plugins alsa-utils \
	libsndfile1 libopus0 libsoxr0 ffmpeg gstreamer1.0-tools gstreamer1.0-plugins-base \
	gstreamer1.0-plugins-good sox python3-venv python3-dev gcc libcodec2-dev

.PHONY: demo test lint typecheck bench system venv clean

system:
	@missing=$$(for p in $(DEB_PACKAGES); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q 'install ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages:" $$missing; \
		$(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends $$missing; \
	fi

$(BIN)/brug: pyproject.toml | system
	[ -x $(BIN)/python ] || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(BIN)/brug

venv: system $(BIN)/brug

demo: venv
	$(BIN)/brug demo

# mypy checks the code under its import names (brug.codecs, ...) through a tree of links: run on
# the folders themselves, the local codecs/ would shadow the standard library's codecs module.
TYPECHECK := build/typecheck
lint: venv
	$(BIN)/ruff check .
	rm -rf $(TYPECHECK) && mkdir -p $(TYPECHECK)/brug
	for d in gateway codecs talkgroups hw_profiles bench; do ln -s ../../../$$d $(TYPECHECK)/brug/$$d; done
	cd $(TYPECHECK) && ../../$(BIN)/mypy --config-file ../../pyproject.toml -p brug

test: venv lint
	$(BIN)/python -m pytest -q

bench: venv
	$(BIN)/python -m pytest -q tests --benchmark-enable --benchmark-only

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache
