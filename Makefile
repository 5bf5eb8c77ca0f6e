# Runbox developer commands. `make help` lists them.
SHELL := /bin/bash
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.DEFAULT_GOAL := help
.PHONY: help venv protos run test k8s-check test-unit test-integration test-e2e check lint types protos-check protos-breaking bench sandbox-image images docker clean

help: ## list the targets
	@grep -E '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-18s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	bash deploy/dev/venv.sh
	@touch $(STAMP)

venv: $(STAMP) ## create .venv and install Runbox with dev tools

protos: $(STAMP) ## regenerate the runbox package from protos/
	$(BIN)/python protos/generate.py
	cd protos && ../$(BIN)/buf lint

docker: ## install and start a Docker engine if none is reachable
	bash deploy/docker/install-docker.sh

sandbox-image: ## build the Python sandbox image offline (mmdebstrap + docker import)
	bash deploy/sandbox/build-image.sh

k8s-check: $(STAMP) ## render and check the Kubernetes manifests (kustomize, schemas, checkov)
	bash deploy/k8s/install-tools.sh
	$(BIN)/pytest -q -p no:cacheprovider tests/e2e/test_k8s_manifests.py

images: ## build every deployable image offline, tagged with the version (IMAGES_ARGS: --force, names)
	bash deploy/images/build.sh $(IMAGES_ARGS)

run: protos ## start the whole stack on embedded defaults, run examples/hello.py, keep serving (RUN_ARGS: runbox up options)
	bash deploy/dev/run.sh $(RUN_ARGS)

test: $(STAMP) ## run the whole test suite
	$(BIN)/pytest -q -p no:cacheprovider $(PYTEST_ARGS)

test-unit: $(STAMP)
	$(BIN)/pytest -q tests/unit

check: lint types protos-check protos-breaking ## lint, type-check, verify generated code is fresh and the protos compatible

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

types: $(STAMP)
	$(BIN)/mypy

protos-check: $(STAMP) ## fail if regenerating the protos changes anything
	$(BIN)/python protos/generate.py
	cd protos && ../$(BIN)/buf lint
	@git diff --exit-code --stat -- runbox || { echo "generated code is stale: run make protos" >&2; exit 1; }
	@test -z "$$(git status --porcelain -- runbox)" || { echo "untracked generated files: run make protos and commit" >&2; exit 1; }

# The release whose clients and services this one must still talk to (docs/upgrades.md).
PREVIOUS_RELEASE ?= cd73b66
protos-breaking: $(STAMP) ## fail if the protos break wire/source compatibility with PREVIOUS_RELEASE
	@# The old protos come from git archive, not buf's own git input: buf clones the
	@# repository for that, which fails in a local clone (CI's fresh clone of main).
	@rm -rf .protos-previous && mkdir -p .protos-previous
	git archive $(PREVIOUS_RELEASE) protos | tar -x -C .protos-previous
	$(BIN)/buf breaking protos --against .protos-previous/protos; rc=$$?; rm -rf .protos-previous; exit $$rc

bench: $(STAMP) ## run the benchmarks (installs the `bench` extra: Celery for the scheduler's baseline)
	$(BIN)/python -m pip install -q -e '.[bench]' -c deploy/dev/constraints.txt
	@shopt -s nullglob; for b in benchmarks/*.py; do grep -q "__main__" $$b || continue; echo "== $$b"; $(BIN)/python $$b || exit 1; done

clean: ## remove .venv and local state under ./var
	rm -rf $(VENV) var
