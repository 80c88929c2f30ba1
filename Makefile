# The two set-up commands (README): `make dashboard` and `make test`.
PYTHON ?= python3
PORT ?= 8501

.PHONY: install dashboard test samples

install:
	$(PYTHON) -c "import torch" 2>/dev/null || $(PYTHON) -m pip install "torch==2.13.0"
	$(PYTHON) -m pip install -q -e ".[dev,onnx,sklearn]"
	$(PYTHON) -m pip install -q --no-deps "onnx2torch>=1.5"  # --no-deps: never pull torchvision (see pyproject)

dashboard: install
	$(PYTHON) -m streamlit run app.py --server.port $(PORT) --server.headless true --browser.gatherUsageStats false

test: install
	$(PYTHON) -m pytest -q

samples:
	$(PYTHON) sample_models/build.py
