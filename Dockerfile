# Image for `baseline`: Python 3.11 and every package of requirements.lock, run as a non-root user.
#
# Base: Debian bookworm by default. Its Python is 3.11, the version the project pins, so nothing
# comes from a PPA. No CUDA base is needed: the torch wheel brings its own CUDA 13 runtime, cuDNN
# and NCCL (the nvidia-* packages in the lock); the host needs an NVIDIA driver for CUDA 13
# (>= 580) and the NVIDIA Container Toolkit, which mounts the driver into the container
# (`docker run --gpus all`). Any base with Python 3.11 and apt works: --build-arg BASE=<image>
# (`make docker-smoke` builds from a local debootstrap of bookworm, for machines with no registry).
# Pinned by tag; to pin the exact bytes, resolve the digest once and use BASE=debian@sha256:<digest>.
ARG BASE=debian:bookworm-20251117-slim

# ---- build: the venv. Extra CA certificates (networks that re-sign HTTPS) are read here only, from
# certs/*.crt in the build context (git-ignored), and never reach the final image or its history.
FROM ${BASE} AS build
# The lock to install; the tests build with a one-package lock to check the Dockerfile in a minute.
ARG LOCK=requirements.lock
ENV DEBIAN_FRONTEND=noninteractive PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv ca-certificates \
    && rm -rf /var/lib/apt/lists/*
COPY certs/ /usr/local/share/ca-certificates/extra/
RUN update-ca-certificates
ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt
RUN python3 -m venv /opt/venv
COPY ${LOCK} /tmp/requirements.lock
# The same lock as `make venv`, before the source is copied, so a code change does not reinstall torch.
RUN /opt/venv/bin/pip install "pip==25.1.1" \
    && /opt/venv/bin/pip install --require-hashes -r /tmp/requirements.lock
COPY pyproject.toml README.md requirements.lock /app/
COPY baseline /app/baseline
# Editable, as `make venv`: the kit runs from /app, where the final stage puts the same source.
RUN /opt/venv/bin/pip install --no-deps -e /app

# ---- the image: the base, Python, make, the venv and the source; nothing else from the build.
FROM ${BASE}
ENV DEBIAN_FRONTEND=noninteractive PYTHONUNBUFFERED=1 PATH=/opt/venv/bin:$PATH
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 make \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /opt/venv /opt/venv
WORKDIR /app
COPY pyproject.toml README.md requirements.lock Makefile ./
COPY baseline ./baseline
RUN useradd --create-home --uid 1000 kit \
    && mkdir -p data runs submissions \
    && chown -R kit:kit /app
USER 1000:1000
ENV WANDB_DIR=/app/runs MPLCONFIGDIR=/tmp/matplotlib
VOLUME ["/app/data", "/app/runs", "/app/submissions"]
CMD ["baseline", "--help"]
