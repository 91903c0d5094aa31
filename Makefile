# make run: install into .venv when needed, start the platform on the embedded defaults.
# make test: install when needed, run the whole suite against real Redis, PostgreSQL and llama.cpp.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Portable x86-64 build of llama.cpp: the default (-march=native) also compiles AMX kernels,
# which crash on virtual machines that report AMX without enabling it.
LLAMA_CMAKE_ARGS ?= -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON

.PHONY: run test bench install services clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" $(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(BIN)/genai serve

services:
	./scripts/ensure-services

test: $(STAMP) services
	$(BIN)/python -m pytest -q

bench: $(STAMP) services
	$(BIN)/python bench/gateway_overhead.py
	$(BIN)/python bench/local_model_tokens.py
	$(BIN)/python bench/retrieval_quality.py
	$(BIN)/python bench/semantic_cache_threshold.py
	$(BIN)/python bench/semantic_cache_latency.py
	$(BIN)/python bench/injection_detection.py
	$(BIN)/python bench/output_filters.py
	$(BIN)/python bench/safety_overhead.py
	$(BIN)/python bench/safety_set.py
	$(BIN)/python bench/fine_tuning.py
	$(BIN)/python bench/vs_litellm.py
	$(BIN)/python bench/graph_overhead.py
	$(BIN)/python bench/long_conversation.py
	$(BIN)/python bench/cluster_memory.py
	$(BIN)/python bench/cluster_chaos.py

clean:
	rm -rf $(VENV) .cache
