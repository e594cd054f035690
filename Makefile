# d4fs — see README.md. `make demo` and `make test` work on a fresh Debian 12 machine.
SHELL := /bin/bash
NODE_STAMP := node_modules/.d4fs-installed

.PHONY: all deps build lint test test-unit demo bench clean

all: build

# Debian packages first: npm ci builds native addons against their headers.
deps: $(NODE_STAMP)
	@bash scripts/install-deps.sh

$(NODE_STAMP): package.json package-lock.json $(wildcard native/*/*.c native/*/*.h native/*/src/*.c native/*/src/*.h native/*/binding.gyp native/*/package.json)
	@bash scripts/install-deps.sh
	npm ci --no-audit --no-fund
	@touch $@

build: deps
	npx tsc -p tsconfig.json
	npx tsc -p tsconfig.lib.json   # the library's type declarations (package.json "types")

lint: deps
	npm run --silent lint

test: build lint
	npx jest --runInBand
	@echo "--- the FUSE tests again with the fallback binding (fuse-native) ---"
	D4FS_FUSE_BINDING=fuse-native npx jest --runInBand dist/test/fuse.test.js dist/test/snapshotter-acceptance.test.js

# The fast loop (~2 min): unit tests and the file-level tests that need no containerd, FUSE or registry.
test-unit: build
	npx jest --runInBand --testPathIgnorePatterns "/dist/src/fuse/fuse3\.test\.js" -- dist/src dist/test/convert.test.js dist/test/security.test.js dist/test/signing.test.js dist/test/papercuts.test.js dist/test/regsync-unit.test.js dist/test/load.store.test.js dist/test/format-versions.test.js dist/test/groups.test.js

demo: build
	bash scripts/demo.sh

# `make bench` runs every section; `make bench cri` (or any of BENCH_SECTIONS) only those named.
BENCH_SECTIONS := convert delta snapshotter regsync gzip update distribution cri p2p scale
bench: build
	node dist/bench/run.js $(filter $(BENCH_SECTIONS),$(MAKECMDGOALS))

# the section names are goals of their own: nothing to make for them
ifneq ($(filter bench,$(MAKECMDGOALS)),)
.PHONY: $(BENCH_SECTIONS)
$(BENCH_SECTIONS):
	@:
endif

clean:
	rm -rf dist
