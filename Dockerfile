# syntax=docker/dockerfile:1

# Two stages: the builder installs the project and its dependencies into a virtualenv, the runtime
# copies only that virtualenv, so no build tooling or pip cache ends up in the final image.
FROM python:3.11-slim AS builder

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1

RUN python -m venv /opt/venv
ENV PATH="/opt/venv/bin:$PATH"

WORKDIR /src
# The wheel force-includes policies/, migrations/ and alembic.ini (pyproject.toml), and hatchling
# needs README.md for the package metadata, so all of them are part of the build context.
COPY pyproject.toml README.md alembic.ini ./
COPY moderation ./moderation
COPY workers ./workers
COPY policies ./policies
COPY migrations ./migrations
RUN pip install .


FROM python:3.11-slim AS runtime

ENV PATH="/opt/venv/bin:$PATH" \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    MODERATION_DATA_DIR=/var/lib/moderation

# A fixed, unprivileged uid so volume ownership is predictable.
RUN groupadd --system --gid 10001 moderation \
    && useradd --system --uid 10001 --gid moderation --home-dir /app --shell /usr/sbin/nologin moderation \
    && mkdir -p /app /var/lib/moderation \
    && chown moderation:moderation /var/lib/moderation

COPY --from=builder /opt/venv /opt/venv

WORKDIR /app
# Also shipped inside the wheel; kept here so `alembic` and `moderation policies load policies/…`
# work from the working directory as they do in a checkout.
COPY alembic.ini ./
COPY policies ./policies
COPY migrations ./migrations

USER moderation

EXPOSE 8080

# The slim image has no curl. Only the API answers HTTP: the compose file disables this check for
# the worker and the one-shot migrate container, which run the same image.
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=4).status == 200 else 1)"]

CMD ["moderation", "api", "--host", "0.0.0.0", "--port", "8080"]
