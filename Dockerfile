# The hub's image: one image, one part per container (mscc intake | mapper | notifier).
FROM python:3.12-slim
# Listen on every interface of the container: the HTTP API, MLLP, and a worker's metrics port when set.
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 \
    MSCC_HTTP_HOST=0.0.0.0 MSCC_MLLP_HOST=0.0.0.0 MSCC_METRICS_HOST=0.0.0.0 MSCC_LOG_FORMAT=json
WORKDIR /app
COPY pyproject.toml README.md ./
COPY shared ./shared
COPY services ./services
RUN pip install --no-cache-dir . && useradd --system --uid 10001 mscc
USER mscc
EXPOSE 8080 2575
CMD ["mscc", "intake"]
