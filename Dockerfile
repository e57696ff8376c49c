# Vickrey services (auction, streams, the autopilot, api, topics, Locust) for docker-compose.yml:
#   docker build -t vickrey .   then   docker run --rm vickrey topics create
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app

# Only what the package needs (never .venv/ or .local/, which hold Kafka jars and data).
COPY pyproject.toml README.md ./
COPY vickrey ./vickrey
COPY core ./core
COPY auction ./auction
COPY autopilot ./autopilot
COPY streams ./streams
COPY schemas ./schemas
COPY loadtests ./loadtests

RUN pip install ".[load]" \
    && useradd --create-home --uid 10001 vickrey \
    && mkdir -p /app/.local && chown vickrey /app/.local

# .local/ is where the stream roles and the autopilot keep their local state (the vickrey user's).
# The source tree stays first on the path too, so data files the wheel may not carry
# (auction/*.lua, vickrey/samples/) are found; loadtests/locustfile.py is run from here.
ENV PYTHONPATH=/app \
    VICKREY_KAFKA=kafka:9092 \
    VICKREY_REDIS=redis://redis:6379/0 \
    VICKREY_METRICS_PORT=9400

USER vickrey
EXPOSE 8080 9400
ENTRYPOINT ["vickrey"]
CMD ["--help"]
