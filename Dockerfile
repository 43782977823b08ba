# syntax=docker/dockerfile:1.7
# tapeserve model server image.
#
# CPU (default):  docker build -t tapeserve .
# CUDA:           docker build -t tapeserve:cuda \
#                   --build-arg BASE_IMAGE=nvidia/cuda:13.0.1-cudnn-runtime-ubuntu24.04 .
# onnxruntime-gpu 1.31 is built for CUDA 13.0 and cuDNN 9: the base must carry both (the nvidia/cuda
# "cudnn-runtime" images do). Any base works as long as it is Debian/Ubuntu-like: Python is
# installed from the distribution when the base lacks it.
#
# Run:  docker run -p 8000:8000 -v "$PWD/examples/models:/models:ro" tapeserve
# Settings come from TAPESERVE_* environment variables (see docs/deploy.md); no secrets are baked in.

ARG BASE_IMAGE=python:3.11-slim-bookworm

# ---- python-base: the chosen base plus a Python that can make virtual environments ----
FROM ${BASE_IMAGE} AS python-base
ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    LANG=C.UTF-8
RUN set -eux; \
    if ! python3 -c 'import venv, ensurepip' >/dev/null 2>&1; then \
        apt-get update; \
        apt-get install -y --no-install-recommends python3 python3-venv ca-certificates; \
        rm -rf /var/lib/apt/lists/*; \
    fi; \
    python3 --version

# ---- requirements: the dependency lists alone, so that editing other parts of pyproject.toml
# (version, test extras, tool settings) does not invalidate the dependency layers ----
FROM python-base AS requirements
COPY pyproject.toml /tmp/pyproject.toml
RUN python3 -c 'import tomllib; p = tomllib.load(open("/tmp/pyproject.toml", "rb")); \
open("/requirements.txt", "w").write("\n".join(p["project"]["dependencies"]) + "\n"); \
open("/build-requirements.txt", "w").write("\n".join(p["build-system"]["requires"]) + "\n")'

# ---- deps: a venv with the runtime dependencies only (the big layer, rebuilt when they change) --
FROM python-base AS deps
RUN python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
# Wheels are kept in a build cache mount, not in a layer: `pip download` skips files it already
# has, so a rebuild after a dependency change fetches only what changed (pip's own HTTP cache is
# not enough: it stores nothing when an index or proxy answers with no-store).
COPY --from=requirements /requirements.txt /tmp/requirements.txt
RUN --mount=type=cache,target=/var/cache/wheels,sharing=locked \
    pip download --quiet -d /var/cache/wheels -r /tmp/requirements.txt \
    && pip install --no-index --find-links /var/cache/wheels -r /tmp/requirements.txt

# ---- builder: the project as a wheel, built without network access once its tools are cached ----
FROM deps AS builder
COPY --from=requirements /build-requirements.txt /tmp/build-requirements.txt
RUN --mount=type=cache,target=/var/cache/wheels,sharing=locked \
    pip download --quiet -d /var/cache/wheels -r /tmp/build-requirements.txt \
    && pip install --no-index --find-links /var/cache/wheels -r /tmp/build-requirements.txt
WORKDIR /src
COPY pyproject.toml README.md ./
COPY serve ./serve
COPY loadgen ./loadgen
COPY engine ./engine
COPY exporters ./exporters
RUN pip wheel --no-deps --no-build-isolation --wheel-dir /dist .

# ---- runtime: the venv on a clean base, a non-root user, models from /models ----
FROM python-base AS runtime
ARG APP_UID=10001
RUN set -eux; \
    groupadd --system --gid "${APP_UID}" tapeserve; \
    useradd --system --uid "${APP_UID}" --gid tapeserve --home-dir /nonexistent \
        --no-create-home --shell /usr/sbin/nologin tapeserve; \
    mkdir -p /models; \
    chown tapeserve:tapeserve /models
COPY --from=deps /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
# The project itself is a small layer of its own on top of the dependencies.
RUN --mount=type=bind,from=builder,source=/dist,target=/dist \
    pip install --no-cache-dir --no-index --no-deps /dist/*.whl \
    && tapeserve --help >/dev/null
# HOME=/tmp: the user has no home, and /tmp is the one writable place on a read-only root.
ENV HOME=/tmp \
    TAPESERVE_MODEL_REPOSITORY=/models \
    TAPESERVE_HOST=0.0.0.0 \
    TAPESERVE_PORT=8000
USER ${APP_UID}:${APP_UID}
WORKDIR /tmp
EXPOSE 8000
# Readiness, not liveness: a container whose models did not load is reported unhealthy.
# Python instead of curl, which slim and CUDA bases do not ship.
HEALTHCHECK --interval=10s --timeout=3s --start-period=60s --retries=3 \
    CMD ["python3", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/v2/health/ready' % os.environ.get('TAPESERVE_PORT', '8000'), timeout=2)"]
# Exec form: `tapeserve serve` execs Gunicorn, which becomes PID 1 and drains on SIGTERM.
STOPSIGNAL SIGTERM
ENTRYPOINT ["tapeserve", "serve"]
