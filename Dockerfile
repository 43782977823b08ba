# syntax=docker/dockerfile:1.7
# tapeserve model server image, in two variants built from the same Python base image.
#
# CPU (default):  docker build -t tapeserve:0.1.0 .
# CUDA:           docker build -t tapeserve:0.1.0-cuda --build-arg VARIANT=cuda .
#
# The CUDA variant adds CUDA 13 and cuDNN 9 from NVIDIA's PyPI wheels (the `cuda` extra:
# onnxruntime-gpu[cuda,cudnn]) to the same virtual environment, as a layer of its own on top of the
# CPU image's layers; onnxruntime.preload_dlls() loads them at start. The host needs only the NVIDIA
# driver, which the NVIDIA Container Toolkit mounts (libcuda.so.1). Alternatively the CPU variant on
# an NVIDIA base that carries CUDA and cuDNN itself:
#   --build-arg BASE_IMAGE=nvidia/cuda:13.0.1-cudnn-runtime-ubuntu24.04
# Any base works as long as it is Debian/Ubuntu-like: Python is installed from the distribution
# when the base lacks it.
#
# Run:  docker run -p 8000:8000 -p 8001:8001 -v "$PWD/examples/models:/models:ro" tapeserve
# Settings come from TAPESERVE_* environment variables (see docs/deploy.md); no secrets are baked in.

ARG BASE_IMAGE=python:3.11-slim-bookworm
# cpu | cuda (see above).
ARG VARIANT=cpu

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
open("/build-requirements.txt", "w").write("\n".join(p["build-system"]["requires"]) + "\n"); \
open("/cuda-requirements.txt", "w").write("\n".join(p["project"]["optional-dependencies"]["cuda"]) + "\n")'

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
# A C compiler and the Python headers for serve/protocol/_jsonnum.c (the numeric JSON parser);
# they stay in this stage: the runtime image gets the built module only.
RUN set -eux; \
    apt-get update; \
    apt-get install -y --no-install-recommends gcc libc6-dev; \
    include="$(python3 -c 'import sysconfig; print(sysconfig.get_paths()["include"])')"; \
    if [ ! -e "$include/Python.h" ]; then apt-get install -y --no-install-recommends python3-dev; fi; \
    rm -rf /var/lib/apt/lists/*
COPY --from=requirements /build-requirements.txt /tmp/build-requirements.txt
RUN --mount=type=cache,target=/var/cache/wheels,sharing=locked \
    pip download --quiet -d /var/cache/wheels -r /tmp/build-requirements.txt \
    && pip install --no-index --find-links /var/cache/wheels -r /tmp/build-requirements.txt
WORKDIR /src
COPY pyproject.toml setup.py README.md ./
COPY serve ./serve
COPY loadgen ./loadgen
COPY engine ./engine
COPY exporters ./exporters
# Installed under /staging as it will lie in the runtime venv (same paths, same interpreter), so
# the runtime stage copies files, not a wheel to install.
RUN pip wheel --no-deps --no-build-isolation --wheel-dir /dist . \
    && pip install --no-cache-dir --no-index --no-deps --root /staging /dist/*.whl

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
# The CUDA variant's libraries: one layer on top of the CPU image's (which both variants share),
# installed into the same venv from the wheel cache mount, so the image holds one installed copy
# of each wheel and no wheel files. The installed packages are pinned (constraints), so nothing the
# CPU layer holds is reinstalled here. On cpu this step adds nothing.
ARG VARIANT
COPY --from=requirements /cuda-requirements.txt /tmp/cuda-requirements.txt
RUN --mount=type=cache,target=/var/cache/wheels,sharing=locked \
    set -eu; \
    case "${VARIANT}" in \
      cpu) ;; \
      cuda) pip freeze --all >/tmp/installed.txt; \
            pip download --quiet -d /var/cache/wheels -c /tmp/installed.txt -r /tmp/cuda-requirements.txt; \
            pip install --no-cache-dir --no-index --find-links /var/cache/wheels \
                -c /tmp/installed.txt -r /tmp/cuda-requirements.txt; \
            rm /tmp/installed.txt ;; \
      *) echo "VARIANT must be cpu or cuda, got '${VARIANT}'" >&2; exit 2 ;; \
    esac; \
    rm /tmp/cuda-requirements.txt
# The project itself is a small layer of its own on top of the dependencies.
COPY --from=builder /staging/ /
# The C parser must have been built (setup.py makes it optional, for installs without a compiler).
RUN tapeserve --help >/dev/null && python3 -c 'import serve.protocol._jsonnum'
# HOME=/tmp: the user has no home, and /tmp is the one writable place on a read-only root.
ENV HOME=/tmp \
    TAPESERVE_MODEL_REPOSITORY=/models \
    TAPESERVE_HOST=0.0.0.0 \
    TAPESERVE_PORT=8000 \
    TAPESERVE_GRPC_PORT=8001
USER ${APP_UID}:${APP_UID}
WORKDIR /tmp
# HTTP (REST) and gRPC.
EXPOSE 8000 8001
# Readiness, not liveness: a container whose models did not load is reported unhealthy.
# Python instead of curl, which slim and CUDA bases do not ship.
HEALTHCHECK --interval=10s --timeout=3s --start-period=60s --retries=3 \
    CMD ["python3", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/v2/health/ready' % os.environ.get('TAPESERVE_PORT', '8000'), timeout=2)"]
# Exec form: `tapeserve serve` execs Gunicorn, which becomes PID 1 and drains on SIGTERM.
STOPSIGNAL SIGTERM
ENTRYPOINT ["tapeserve", "serve"]
