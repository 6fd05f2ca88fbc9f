# The README's commands. Every check class has a target; `make test` runs them all.
CARGO ?= cargo
SHELL := /bin/bash

## demo: mount a SecretProviderClass from an emulated Key Vault and watch a secret rotate
demo:
	$(CARGO) build --locked --bin keyvault-csi --bin kv-emulator
	hack/demo.sh

## bench: performance figures (printed, not asserted), side by side with the upstream driver on a real API server (hack/bench.sh)
bench:
	CARGO=$(CARGO) hack/bench.sh

## soak: SOAK_VOLUMES volumes for SOAK_SECS seconds under constant secret changes (defaults 200, 600)
soak:
	$(CARGO) bench --locked -p keyvault-csi --bench soak --no-run
	hack/in-mount-ns.sh $(CARGO) bench --locked -p keyvault-csi --bench soak

## fuzz: every fuzz target under libFuzzer, coverage-guided (FUZZ_RUNS executions each, default 10^7;
## corpora kept in fuzz/corpus/); `make test` runs the same targets time-boxed
fuzz:
	CARGO=$(CARGO) hack/fuzz.sh

crds:
	cargo run -q -p keyvault-csi -- crds | python3 -c 'import sys; parts = sys.stdin.read().split("# Generated"); \
	  open("charts/keyvault-csi/crds/crds.yaml", "w").write("# Generated" + parts[1]); \
	  open("charts/keyvault-csi/crds/secretsync.yaml", "w").write("# Generated" + parts[2])'

.PHONY: fuzz e2e crds chart report soak bench demo test lint fmt-check clippy unit conformance build release clean

## test: formatting, lints, then every test (unit, crate and end-to-end) with real tmpfs mounts, the
## emulator against Azure's SDKs, and the Helm chart
test: lint unit conformance chart report

lint: fmt-check clippy

fmt-check:
	$(CARGO) fmt --all -- --check

clippy:
	$(CARGO) clippy --workspace --all-targets --locked -- -D warnings

## unit: build first (outside the namespace, so a failing build says so plainly), then run the tests
## where tmpfs mounts are allowed and invisible to the host (see hack/in-mount-ns.sh)
unit:
	$(CARGO) test --workspace --locked --no-run
	hack/in-mount-ns.sh $(CARGO) test --workspace --locked

## conformance: Azure's own Python SDKs (pinned in tests/conformance/requirements.txt, installed into
## $(VENV) from PyPI on first use) against kv-emulator
VENV ?= .venv-tools
$(VENV)/.installed: tests/conformance/requirements.txt tests/chart/requirements.txt
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install -q -r tests/conformance/requirements.txt -r tests/chart/requirements.txt
	touch $@

# `cargo test --no-run` builds kv-emulator with the workspace's test feature set: after `unit` it is a
# no-op (a plain `cargo build -p emulator` would rebuild half the dependency tree with other features).
conformance: $(VENV)/.installed
	$(CARGO) test --workspace --locked --no-run
	$(VENV)/bin/pytest -q -p no:cacheprovider tests/conformance

## chart: render the Helm chart with Helm v4 (helm-python-sdk), validate every object against the
## Kubernetes schemas of the oldest and newest supported releases, start the binary with its args, and
## check every alert and dashboard query (parsed PromQL) against the metrics the binary exposes
chart: $(VENV)/.installed
	$(CARGO) test --workspace --locked --no-run
	hack/in-mount-ns.sh $(CARGO) test --workspace --locked --test observability every_metric_family
	$(VENV)/bin/pytest -q -p no:cacheprovider tests/chart

## report: the scale report's generator (hack/scale-report.py) against a recorded cluster run: the model,
## a page with nothing to fetch, and a check that catches a page not showing the run (in headless
## Chromium when it is installed; make bench always runs that check)
report: $(VENV)/.installed
	$(VENV)/bin/pytest -q -p no:cacheprovider tests/report

## e2e: the chart installed with Helm on a real cluster (KUBECONFIG, or the k8s kit in ../shared/k8s,
## started and stopped around the run), real pods under the real kubelet (hack/e2e.sh)
e2e: $(VENV)/.installed
	hack/e2e.sh

build:
	$(CARGO) build --workspace --locked

## release: static (musl) binaries for linux/amd64 and linux/arm64 in target/release-static/
release:
	hack/release.sh

clean:
	$(CARGO) clean
