# One image for every role: `bananastand serve`, `bananastand worker`, `bananastand migrate`.
# Build: docker build -t bananastand .
FROM python:3.11-slim

# No .pyc files written at run time, logs unbuffered (one JSON object per line).
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app
COPY pyproject.toml README.md ./
COPY src ./src
RUN pip install . && useradd --system --uid 10001 --home-dir /var/lib/bananastand bananastand \
    && mkdir -p /var/lib/bananastand && chown bananastand /var/lib/bananastand

USER bananastand
ENV BANANASTAND_DATA_DIR=/var/lib/bananastand \
    BANANASTAND_HOST=0.0.0.0 \
    BANANASTAND_LOG_FORMAT=json
EXPOSE 8000
# /healthz answers while the process serves requests; readiness is /readyz (see docs/deploy.md).
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s \
    CMD python -c "import urllib.request,sys; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=2)" || exit 1
CMD ["bananastand", "serve"]
