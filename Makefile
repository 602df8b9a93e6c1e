# Two entry points for a fresh machine: `make run` and `make test` (see README.md).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
DEBIAN_PACKAGES := qemu-system-x86 libvirt-daemon-system libvirt-clients libvirt-dev pkg-config util-linux procps zstd
# What building iommufd and vfio against Debian's 6.12 headers needs (tests/nested/iommufd_build.py).
DEBIAN_PACKAGES += gcc-12 make binutils xz-utils libelf1 libssl3

.PHONY: run test venv test-venv debian-packages nested-kernels lint typecheck pytest bench clean

$(BIN)/vfiotask: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e .
	@touch $@

venv: $(BIN)/vfiotask

# The main job on its embedded default: 1 GiB memfd, prefaulted and pinned in parallel.
run: venv
	$(BIN)/vfiotask prepin

debian-packages:
	@missing=""; for p in $(DEBIAN_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q 'install ok installed' || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "installing Debian packages:$$missing"; \
	    apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q $$missing; \
	  else \
	    echo "not root: tests needing$$missing will be skipped"; \
	  fi; \
	fi

$(VENV)/.test-installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	@if pkg-config --exists libvirt 2>/dev/null; then $(BIN)/pip install -q -e '.[libvirt]'; \
	  else echo "libvirt-dev missing: libvirt-python not installed, its tests will be skipped"; fi
	@touch $@

test-venv: debian-packages $(VENV)/.test-installed

# The nested guest's kernels and busybox, unpacked (never installed) into build/nested/; what
# cannot be fetched is named, and its tests skip saying so.
nested-kernels: test-venv
	$(BIN)/python -m tests.nested.kernels

lint: test-venv
	$(BIN)/ruff check vfiotask tests hooks/qemu

typecheck: test-venv
	$(BIN)/mypy

pytest: test-venv nested-kernels
	$(BIN)/pytest -q

test: lint typecheck pytest

bench: venv
	$(BIN)/vfiotask bench

clean:
	rm -rf $(VENV) build *.egg-info
