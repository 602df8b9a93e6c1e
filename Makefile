# Two entry points for a fresh machine: `make run` and `make test` (see README.md).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
DEBIAN_PACKAGES := qemu-system-x86 libvirt-daemon-system libvirt-clients libvirt-dev pkg-config util-linux procps zstd
# What building iommufd and vfio against Debian's 6.12 headers needs (tests/nested/iommufd_build.py).
DEBIAN_PACKAGES += gcc-12 make binutils xz-utils libelf1 libssl3

.PHONY: run test venv test-venv debian-packages nested-kernels lint typecheck pytest bench clean install uninstall generate

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

# The checkout on sys.path by a plain .pth line (editable_mode=compat), not by setuptools' import
# finder, which costs every Python start 20 to 40 ms: the suite starts the command hundreds of
# times.  setuptools calls that mode transitional; where it is gone, the default install follows.
EDITABLE := --config-settings editable_mode=compat

$(VENV)/.test-installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q $(EDITABLE) -e '.[test]' 2>/dev/null || $(BIN)/pip install -q -e '.[test]'
	@if pkg-config --exists libvirt 2>/dev/null; then \
	  $(BIN)/pip install -q $(EDITABLE) -e '.[libvirt]' 2>/dev/null || $(BIN)/pip install -q -e '.[libvirt]'; \
	  else echo "libvirt-dev missing: libvirt-python not installed, its tests will be skipped"; fi
	@touch $@

test-venv: debian-packages $(VENV)/.test-installed

# The nested guest's kernels and busybox, unpacked (never installed) into build/nested/; what
# cannot be fetched is named, and its tests skip saying so.  `make test` fetches them in the
# background of its host tests (tests/nested/background.py); this target fetches them alone.
nested-kernels: test-venv
	$(BIN)/python -m tests.nested.kernels

lint: test-venv
	$(BIN)/ruff check vfiotask tests hooks/qemu

typecheck: test-venv
	$(BIN)/mypy

# Byte-compiled first: the suite starts the command hundreds of times, the nested guest too (under
# TCG), and with PYTHONDONTWRITEBYTECODE set, as CI runners often have it, each start would compile
# the package again (0.8 s against 0.4 s here).
pytest: test-venv
	$(BIN)/python -m compileall -q vfiotask tests
	$(BIN)/pytest -q

test: lint typecheck pytest

bench: venv
	$(BIN)/vfiotask bench

clean:
	rm -rf $(VENV) build *.egg-info

# A real install, independent of this checkout: a venv under $(PREFIX) with the wheel built from
# here, the command linked into $(BINDIR), the manual page, completions and systemd units where
# man, the shells and systemd look (the units' ExecStart names $(BINDIR)/vfiotask).  Then:
# vfiotask hook install (docs/quickstart.md).  `make uninstall` first removes the hook from
# $(HOOKSDIR) (default: libvirt's, /etc/libvirt/hooks).
PREFIX ?= /opt/vfiotask
BINDIR ?= /usr/local/bin
SHAREDIR ?= /usr/local/share
UNITDIR ?= /etc/systemd/system
HOOKSDIR ?=
UNITS := vfiotask-stage@.service vfiotask-recover.service

install:
	$(PYTHON) -m venv --clear $(PREFIX)
	$(PREFIX)/bin/pip install -q --upgrade pip
	@if pkg-config --exists libvirt 2>/dev/null; then spec='.[libvirt]'; else spec=.; fi; \
	  echo "$(PREFIX)/bin/pip install -q '$$spec'"; $(PREFIX)/bin/pip install -q "$$spec"
	install -d $(BINDIR)
	ln -sf $(PREFIX)/bin/vfiotask $(BINDIR)/vfiotask
	install -D -m 644 $(PREFIX)/share/man/man1/vfiotask.1 $(SHAREDIR)/man/man1/vfiotask.1
	install -D -m 644 $(PREFIX)/share/bash-completion/completions/vfiotask \
	  $(SHAREDIR)/bash-completion/completions/vfiotask
	install -D -m 644 $(PREFIX)/share/zsh/site-functions/_vfiotask $(SHAREDIR)/zsh/site-functions/_vfiotask
	install -d $(UNITDIR)
	for unit in $(UNITS); do \
	  sed 's|^ExecStart=/usr/local/bin/vfiotask |ExecStart=$(BINDIR)/vfiotask |' \
	    $(PREFIX)/lib/systemd/system/$$unit > $(UNITDIR)/$$unit.tmp && chmod 644 $(UNITDIR)/$$unit.tmp && \
	  mv $(UNITDIR)/$$unit.tmp $(UNITDIR)/$$unit || exit 1; \
	done
	@if [ "$(UNITDIR)" = /etc/systemd/system ] && [ -d /run/systemd/system ]; then systemctl daemon-reload; fi
	@echo "installed vfiotask in $(PREFIX); next: $(BINDIR)/vfiotask hook install && systemctl restart libvirtd"

uninstall:
	-$(BINDIR)/vfiotask hook uninstall $(if $(HOOKSDIR),--hooks-dir $(HOOKSDIR))
	rm -f $(BINDIR)/vfiotask $(SHAREDIR)/man/man1/vfiotask.1 $(SHAREDIR)/bash-completion/completions/vfiotask \
	  $(SHAREDIR)/zsh/site-functions/_vfiotask $(addprefix $(UNITDIR)/,$(UNITS))
	rm -rf $(PREFIX)
	@if [ "$(UNITDIR)" = /etc/systemd/system ] && command -v systemctl >/dev/null; then systemctl daemon-reload; fi

# The manual page and completions are generated from the parser (a test checks they are current).
generate: test-venv
	$(BIN)/python -m vfiotask.integrations.cli.generate
