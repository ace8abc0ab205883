# The two commands that matter: `make demo` and `make test` (see README.md).
# Both set up what they need on a fresh Debian machine: a venv in .venv built from Debian's
# python3 (tenant sandboxes must be able to read the interpreter; a pyenv Python under /root is
# not readable by tenant users), and, as root, the Debian packages the tests use.

SHELL := /bin/bash
PYTHON ?= $(shell test -x /usr/bin/python3 && echo /usr/bin/python3 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

TEST_DEBS := python3-venv bubblewrap util-linux sqlite3 curl pebble knot knot-dnsutils chromium \
	testssl.sh python3-seccomp prometheus etcd-server etcd-client
BENCH_DEBS := wrk caddy nginx-light
IMAGE_DEBS := buildah debootstrap util-linux iproute2 curl python3-seccomp
IMAGE ?= gateway:latest
BUILDAH := buildah --storage-driver vfs

.PHONY: demo test test-drills check lint typecheck venv debs bench-debs image image-test bench lock clean docs apt

# As root, the demo installs what sandboxes tenants (as `make test` does); as another user it runs
# with what is there (README: "Tenant processes and isolation").
DEMO_DEBS := bubblewrap util-linux

demo: $(STAMP)
	@if [ "$$(id -u)" = 0 ]; then $(MAKE) --no-print-directory apt DEBS="$(DEMO_DEBS)"; fi
	$(BIN)/python -m gateway.demo build demo
	@echo
	@echo "Serving http://localhost:8000 (alice: http://alice.localhost:8000, bob: http://bob.localhost:8000)"
	$(BIN)/gateway --config demo/gateway.toml serve

test: debs $(STAMP) lint typecheck
	$(BIN)/python -m pytest

# Failure drills (pytest's `drill` marker): kill -9 of a cluster host or an edge, etcd quorum
# lost, the object storage down for a while. Minutes each; `make test` runs everything else.
test-drills: debs $(STAMP)
	$(BIN)/python -m pytest -m drill

check: lint typecheck

lint: $(STAMP)
	$(BIN)/ruff check gateway tests bench

typecheck: $(STAMP)
	$(BIN)/mypy

venv: $(STAMP)

$(STAMP): pyproject.toml requirements.lock
	@$(PYTHON) -m venv --help >/dev/null 2>&1 && $(PYTHON) -c 'import ensurepip' 2>/dev/null || \
		$(MAKE) --no-print-directory apt DEBS=python3-venv
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -c requirements.lock -e '.[test]'
	$(BIN)/pip install --quiet --disable-pip-version-check --no-deps vega_datasets==0.9.0
	touch $@

# Debian packages, installed with apt-get only when one is missing (and only as root).
debs:
	@$(MAKE) --no-print-directory apt DEBS="$(TEST_DEBS)"

bench-debs:
	@$(MAKE) --no-print-directory apt DEBS="$(BENCH_DEBS)"

apt:
	@missing=$$(for p in $(DEBS); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | \
		grep -q 'install ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		if [ "$$(id -u)" != 0 ]; then echo "missing Debian packages (install as root): $$missing"; exit 1; fi; \
		echo "installing: $$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi

bench: debs bench-debs $(VENV)/.bench-installed  # debs: bench/acme runs pebble and knot
	for name in proxy swap acme upload abuse metrics backup; do \
		$(BIN)/python bench/$$name.py || exit 1; done

bench-%: debs bench-debs $(VENV)/.bench-installed
	$(BIN)/python bench/$*.py

# What only the benchmarks use (pyproject's bench extra: aiohttp for bench/proxy's comparison).
$(VENV)/.bench-installed: $(STAMP)
	$(BIN)/pip install --quiet --disable-pip-version-check -c requirements.lock -e '.[bench]'
	touch $@

# The Docker image, built with buildah: no Docker engine needed (README.md, "Deploy"). Where
# Docker Hub is out of reach (CI), ../shared/tools/base-image makes debian:bookworm-slim locally.
# The image it replaces is removed (vfs storage keeps a full copy of every image).
image:
	@$(MAKE) --no-print-directory apt DEBS="$(IMAGE_DEBS)"
	@$(BUILDAH) inspect --type image debian:bookworm-slim >/dev/null 2>&1 || \
		if [ -x ../shared/tools/base-image ]; then ../shared/tools/base-image; \
		else $(BUILDAH) pull docker.io/library/debian:bookworm-slim; fi
	@old=$$($(BUILDAH) images --quiet $(IMAGE) 2>/dev/null); \
	$(BUILDAH) bud --format docker --isolation chroot --pull=never --tag $(IMAGE) . && \
	if [ -n "$$old" ] && [ "$$old" != "$$($(BUILDAH) images --quiet $(IMAGE))" ]; then \
		$(BUILDAH) rmi "$$old" >/dev/null 2>&1 || true; fi
	@$(BUILDAH) images $(IMAGE)

# Runs the built image as Docker would (tests/image): a tenant added while it runs, SIGHUP,
# SIGTERM, and the sandbox under Docker's default confinement and under the README's options.
image-test: $(STAMP)
	@$(MAKE) --no-print-directory apt DEBS="$(IMAGE_DEBS)"
	GATEWAY_IMAGE=$(IMAGE) $(BIN)/python -m pytest tests/image -m image -p no:cacheprovider

lock: $(STAMP)
	$(BIN)/pip freeze --exclude-editable | grep -viE '^(gateway|vega-datasets)==' | \
		(echo "# Pinned versions for the venv and the image: pip install -c requirements.lock ..."; \
		 echo "# Regenerate after changing pyproject.toml: make lock"; cat) > requirements.lock

clean:
	rm -rf $(VENV) demo .pytest_cache .mypy_cache .ruff_cache

docs: $(STAMP)
	$(BIN)/python -m gateway.config_docs --write
