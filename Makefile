# virtrigaud developer entry points. Everything runs from the project venv (.venv).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PROTO_SRC := proto/virtrigaud/provider/v1/provider.proto

.PHONY: install system-deps proto lint test test-fast demo images clean

## install: create .venv and install virtrigaud with its dev and libvirt extras
install: $(BIN)/virtrigaud

$(BIN)/virtrigaud: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev,libvirt]'
	@touch $@

## system-deps: Debian packages the tests and the demo need (run as root)
system-deps:
	scripts/install-system-deps.sh

## proto: regenerate the committed Python stubs from proto/ (never edit them by hand)
proto: install
	scripts/gen-proto.sh .

## lint: ruff and mypy, both must be clean
lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

## test: system packages, venv, then the whole suite incl. lint (starts its own servers)
test: system-deps install
	scripts/run-tests.sh

## demo: migrate a running two-disk vSphere (vcsim) VM to libvirt/KVM through local S3, verified
demo: system-deps install
	$(BIN)/python scripts/demo.py

## images: build the manager and provider images (needs a Docker engine; the tests lint
## the Dockerfiles with hadolint and run the images' commands in the venv instead)
IMAGE_TAG ?= $(shell sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)
images:
	@command -v docker >/dev/null || { echo "make images: no docker command here" >&2; exit 1; }
	docker build -f Dockerfile.manager -t virtrigaud/manager:$(IMAGE_TAG) .
	docker build -f Dockerfile.provider -t virtrigaud/provider:$(IMAGE_TAG) .

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache build *.egg-info
