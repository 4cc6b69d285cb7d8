# Sallyport — make targets. `make help` lists them.

GO       ?= go
BIN      := bin/sallyport
TOOLS    := $(CURDIR)/bin/tools
FUZZTIME ?= 10s

STATICCHECK_VERSION := v0.8.2
GOSEC_VERSION       := v2.30.0

.DEFAULT_GOAL := help

.PHONY: help
help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-8s %s\n", $$1, $$2}'

.PHONY: setup
setup: ## install what building and testing need (Debian packages; run as root) and fetch Go modules
	bash test/setup.sh
	$(GO) mod download

.PHONY: build
build: ## build bin/sallyport
	$(GO) build -trimpath -o $(BIN) ./cmd/sallyport

.PHONY: run
run: build ## build and start `sallyport dev` (SSH on 127.0.0.1:2222, API on https://127.0.0.1:8443, data in ./.sallyport)
	./$(BIN) dev

.PHONY: test
test: ## install test dependencies, then run every test (unit and end-to-end) with the race detector
	bash test/setup.sh
	$(GO) test -race -count=1 -timeout 45m ./...

.PHONY: fuzz
fuzz: ## run every fuzz target for FUZZTIME each (default 10s)
	@set -e; for f in $$(grep -rho --include='*_test.go' '^func Fuzz[A-Za-z0-9_]*' . | sort -u | cut -d' ' -f2); do \
	  dir=$$(grep -rl --include='*_test.go' "^func $$f(" . | head -1 | xargs dirname); \
	  echo "fuzz $$dir $$f"; $(GO) test -run '^$$' -fuzz "^$$f$$" -fuzztime $(FUZZTIME) $$dir; \
	done

.PHONY: lint
lint: $(TOOLS)/staticcheck $(TOOLS)/gosec ## gofmt, go vet, staticcheck and gosec (pinned versions)
	@unformatted=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go' -not -path './bin/*')); \
	  if [ -n "$$unformatted" ]; then echo "gofmt would change: $$unformatted"; exit 1; fi
	$(GO) vet ./...
	$(TOOLS)/staticcheck ./...
	$(TOOLS)/gosec -quiet -exclude-generated ./...

$(TOOLS)/staticcheck:
	GOBIN=$(TOOLS) $(GO) install honnef.co/go/tools/cmd/staticcheck@$(STATICCHECK_VERSION)

$(TOOLS)/gosec:
	GOBIN=$(TOOLS) $(GO) install github.com/securego/gosec/v2/cmd/gosec@$(GOSEC_VERSION)

.PHONY: bench
bench: ## benchmarks against the real alternatives (see BENCHMARKS.md)
	bash test/setup.sh
	$(GO) test -count=1 -run '^$$' -bench . -benchtime 2s -timeout 10m ./hsm/
	$(GO) test -count=1 -run '^$$' -bench Relay -benchtime 10x -timeout 10m ./gateway/rdp/
	$(GO) test -count=1 -run '^$$' -bench . -benchtime 1x -timeout 75m ./test/

.PHONY: clean
clean: ## remove build output
	rm -rf bin
