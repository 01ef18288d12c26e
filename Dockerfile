# syncmon: `syncmon run` (consumer, health scheduler and HTTP on :8000) in one process.
#   docker build -t syncmon:local .
#   docker run --rm -p 8000:8000 -e SYNCMON_KAFKA_BOOTSTRAP_SERVERS=kafka:9092 \
#     -e SYNCMON_REDIS_URL=redis://redis:6379/0 syncmon:local
# The same image runs the simulator: `syncmon simulate --syncs 200 --rate 50`.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# An unprivileged user with a fixed uid, so mounted files and policies can name it.
RUN groupadd --system --gid 10001 syncmon \
    && useradd --system --uid 10001 --gid syncmon --home-dir /home/syncmon --create-home \
       --shell /usr/sbin/nologin syncmon

# Only what the package needs, so edits to tests, docs or dashboards keep this layer cached.
WORKDIR /src
COPY pyproject.toml ./
COPY monitor ./monitor
COPY consumers ./consumers
RUN pip install . \
    && rm -rf /src

WORKDIR /home/syncmon
USER syncmon

# Listen on every interface inside the container (the default 127.0.0.1 is unreachable).
ENV SYNCMON_HTTP_HOST=0.0.0.0 \
    SYNCMON_HTTP_PORT=8000
EXPOSE 8000

# /healthz answers 200 while the process lives; python's urllib, since slim has no curl.
HEALTHCHECK --interval=10s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('SYNCMON_HTTP_PORT', '8000') + '/healthz', timeout=4)"]

# SIGTERM finishes the current batch and exits 0 (uvicorn allows 30 s to drain).
STOPSIGNAL SIGTERM
CMD ["syncmon", "run"]
