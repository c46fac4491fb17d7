# `make run` and `make test` work on a fresh Debian 12 machine as root: they install what is
# missing (apt packages, a venv with pinned Python dependencies) and are quick when it is there.

SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
# Debian packages the project and its tests drive. Keep this list the single source of truth.
# npm (the npm resolver of loft env lock) is installed from Debian unless the host already has it.
# haproxy is only an anchor of bench/preview_proxy.py (its service's default config listens nowhere).
APT_PACKAGES := python3-venv python3-dev gcc postgresql qemu-utils nbdkit libnbd-bin \
	python3-libnbd fio e2fsprogs fuse3 bubblewrap nix-bin python3-apt mmdebstrap openssl curl \
	runc catatonit slirp4netns nftables iproute2 qemu-system-x86 busybox-static cpio xfsprogs \
	haproxy
PYTEST_ARGS ?=

.PHONY: run test deps guest lint typecheck check bench clean
# What a loft VM boots (kernel, initramfs, guest agent): built, never committed.
GUEST_DIR ?= build/guest

deps: .deps/apt.stamp $(VENV)/.stamp guest

guest: .deps/apt.stamp
	@./guest/build.sh $(GUEST_DIR)

.deps/apt.stamp: Makefile
	@missing=$$(for p in $(APT_PACKAGES); do \
		dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q '^install ok installed' || echo $$p; \
	done; command -v npm >/dev/null || echo npm); \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages:" $$missing; \
		apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $$missing; \
	fi
	@mkdir -p .deps && touch $@

$(VENV)/.stamp: requirements.txt pyproject.toml .deps/apt.stamp
	@test -x $(PY) || /usr/bin/python3 -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -r requirements.txt
	$(PY) -m pip install -q --disable-pip-version-check --no-deps -e .
	@touch $@

run: deps
	$(VENV)/bin/loft up

lint: deps
	$(VENV)/bin/ruff check src tests bench
	$(VENV)/bin/ruff format --check src tests bench

typecheck: deps
	$(VENV)/bin/mypy

test: lint typecheck
	$(VENV)/bin/pytest $(PYTEST_ARGS)

bench: deps
	@for b in bench/[!_]*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

clean:
	rm -rf $(VENV) .deps .mypy_cache .ruff_cache build
