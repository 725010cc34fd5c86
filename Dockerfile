# CUDA image for `baseline`. The torch wheel brings its own CUDA runtime, cuDNN and NCCL, so the
# base only needs to be a CUDA-capable Ubuntu; the host needs an NVIDIA driver recent enough for
# the wheel's CUDA (torch 2.14 wheels: CUDA 13, driver >= 580) and the NVIDIA Container Toolkit.
# Pinned by tag; to pin the exact bytes, resolve the digest once and use it instead:
#   docker buildx imagetools inspect nvidia/cuda:12.8.1-base-ubuntu22.04   (prints sha256:...)
#   FROM nvidia/cuda:12.8.1-base-ubuntu22.04@sha256:<digest>
FROM nvidia/cuda:12.8.1-base-ubuntu22.04

ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# Python 3.11, the version the project pins (Ubuntu 22.04 ships 3.10).
RUN apt-get update \
    && apt-get install -y --no-install-recommends software-properties-common gpg-agent \
    && add-apt-repository -y ppa:deadsnakes/ppa \
    && apt-get update \
    && apt-get install -y --no-install-recommends python3.11 python3.11-venv git \
    && rm -rf /var/lib/apt/lists/*

RUN python3.11 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

WORKDIR /app
# The same pinned dependency list as `make` (pyproject.toml), installed before the source is
# copied so a code change does not reinstall torch.
COPY pyproject.toml README.md ./
RUN mkdir baseline && touch baseline/__init__.py \
    && pip install "pip==25.1.1" \
    && pip install . \
    && pip uninstall -y baseline
COPY baseline ./baseline
COPY Makefile ./
RUN pip install --no-deps . \
    && useradd --create-home --uid 1000 kit \
    && mkdir -p data runs submissions \
    && chown -R kit:kit /app

USER 1000:1000
ENV WANDB_DIR=/app/runs
VOLUME ["/app/data", "/app/runs", "/app/submissions"]
CMD ["baseline", "--help"]
