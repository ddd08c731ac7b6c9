# syntax=docker/dockerfile:1
# The `migrate` runner as a container image: python:3.11-slim, non-root, no build tools, works
# with a read-only root filesystem. Build: docker build -t migrate .
# Your migrations: a derived image (FROM this; COPY migrations/ /app/migrations/), or replace
# the COPY of the example folder below. What was and was not tested: docs/kubernetes.md.

# --- builder: build the wheels (the project's and its dependencies') -----------------------
FROM python:3.11-slim AS builder
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY runner/ runner/
COPY compat/ compat/
RUN pip wheel --no-deps --wheel-dir /wheels . \
 && pip wheel --wheel-dir /wheels /wheels/migrate_runner-*.whl

# --- final: install the wheels into a virtualenv, nothing else ----------------------------
FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PATH=/opt/migrate/bin:$PATH \
    MIGRATE_MIGRATIONS=/app/migrations \
    MIGRATE_LOG_FORMAT=json
RUN --mount=type=bind,from=builder,source=/wheels,target=/wheels \
    python -m venv /opt/migrate \
 && /opt/migrate/bin/pip install --no-index --find-links /wheels migrate-runner \
 && /opt/migrate/bin/pip uninstall -y pip \
 && python -m compileall -q /opt/migrate
COPY --chown=root:root migrations/ /app/migrations/
WORKDIR /app
USER 10001:10001
ENTRYPOINT ["migrate"]
CMD ["--help"]
