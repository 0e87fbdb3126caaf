# The README's two commands:
#   make quickstart   install missing Debian packages, configure, build, run studies/quickstart.toml
#   make test         the same set-up, then every test (ctest)
#   make figures      the same set-up, then the charts of every results/*.sqlite as PNGs in
#                     results/figures/NAME/ (scripts/charts.sh; needs results/quickstart.sqlite, which
#                     make quickstart writes; RESULTS=DIR reads another folder), then re-run the cheap
#                     numbers of docs/benchmarks.md and docs/experiments.md and print each beside the
#                     documented value (scripts/figures.sh; minutes: it runs the benchmarks)
#   make charts       the charts alone (seconds)
BUILD ?= build
RESULTS ?= results
JOBS ?= $(shell nproc 2>/dev/null || echo 2)
CMAKE_FLAGS ?= -DCMAKE_BUILD_TYPE=Release

# Debian 12 packages the build needs (see README "Stack").
PACKAGES := build-essential cmake ninja-build git pkg-config \
  libtorch-dev libboost-dev libboost-filesystem-dev libtomlplusplus-dev libsqlite3-dev \
  libcli11-dev nlohmann-json3-dev libgtest-dev libgmock-dev libbenchmark-dev \
  qt6-base-dev qt6-charts-dev libqt6opengl6-dev libgloo-dev libopenblas0-openmp

.PHONY: quickstart test figures charts build configure deps clean

quickstart: build
	$(BUILD)/bin/mhd run studies/quickstart.toml

test: build
	ctest --test-dir $(BUILD) --output-on-failure -j$(JOBS)

figures: charts
	scripts/figures.sh $(BUILD)

charts: build
	scripts/charts.sh $(BUILD) $(RESULTS) $(RESULTS)/figures

# The charts need the quickstart's results: without them, one line before anything is built (unless
# `make quickstart figures` is about to write them).
ifneq ($(filter figures charts,$(MAKECMDGOALS)),)
ifeq ($(filter quickstart,$(MAKECMDGOALS))$(wildcard $(RESULTS)/quickstart.sqlite),)
$(error $(RESULTS)/quickstart.sqlite not found: run `make quickstart` first (it trains studies/quickstart.toml and writes it))
endif
endif

build: configure
	cmake --build $(BUILD) -j$(JOBS)

configure: deps
	@if [ ! -f $(BUILD)/build.ninja ]; then cmake -S . -B $(BUILD) -G Ninja $(CMAKE_FLAGS); fi

# Installs only what is missing; needs root (or sudo) the first time.
deps:
	@missing=$$(for p in $(PACKAGES); do dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "install ok installed" || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  echo "Installing missing packages:" $$missing; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends $$missing; \
	fi

clean:
	rm -rf $(BUILD)
