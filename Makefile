# d4fs — see README.md. `make demo` and `make test` work on a fresh Debian 12 machine.
SHELL := /bin/bash
NODE_STAMP := node_modules/.d4fs-installed

.PHONY: all deps build test demo bench clean

all: build

deps: $(NODE_STAMP)
	@bash scripts/install-deps.sh

# System packages first: npm ci builds the libfuse3 binding (native/fuse3) against libfuse3-dev.
$(NODE_STAMP): package.json package-lock.json native/fuse3/binding.gyp native/fuse3/src/binding.c
	@bash scripts/install-deps.sh
	npm ci --no-audit --no-fund
	@touch $@

build: deps
	npx tsc -p tsconfig.json

test: build
	npx jest --runInBand

demo: build
	bash scripts/demo.sh

bench: build
	node dist/bench/run.js

clean:
	rm -rf dist
