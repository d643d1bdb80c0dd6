# streamdetect service image: `docker build -t streamdetect .`
# Runs `streamdetect run` by default; the metrics/health port is 9108.
FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY streamdetect ./streamdetect
RUN python -m venv /opt/venv \
    && /opt/venv/bin/pip install --upgrade pip \
    && /opt/venv/bin/pip install .

FROM python:3.11-slim
LABEL org.opencontainers.image.title="streamdetect" \
      org.opencontainers.image.description="Streaming anomaly detection for real-time sales events" \
      org.opencontainers.image.licenses="Apache-2.0"
# numba caches the compiled kernels under /tmp (writable where the root filesystem is not: the
# Kubernetes Deployment mounts an emptyDir there). The image carries them compiled ahead in
# /opt/streamdetect/kernels, which a process copies there before it loads any: a new container
# loads them in a fraction of a second instead of compiling for some 20 s, when its CPU is the
# build machine's kind (numba stamps a kernel with the CPU it was built for and compiles afresh
# on another: build on the nodes' kind, or set NUMBA_CPU_NAME=generic for both, a little slower).
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PROMETHEUS_DISABLE_CREATED_SERIES=True \
    NUMBA_CACHE_DIR=/tmp/numba-cache \
    STREAMDETECT_KERNEL_CACHE_SEED=/opt/streamdetect/kernels
COPY --from=build /opt/venv /opt/venv
RUN NUMBA_CACHE_DIR=/opt/streamdetect/kernels \
    python -c "from streamdetect.detector import compile_kernels; print('kernels compiled in %.1f s' % compile_kernels())" \
    && chmod -R a+rX /opt/streamdetect
RUN groupadd --system --gid 10001 streamdetect \
    && useradd --system --uid 10001 --gid streamdetect --home-dir /app --create-home streamdetect
WORKDIR /app
USER 10001:10001
EXPOSE 9108
# Liveness as Kubernetes sees it (/healthz on the metrics port); compose uses it too.
HEALTHCHECK --interval=15s --timeout=3s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('STREAMDETECT_METRICS__PORT', '9108'), timeout=2)"]
ENTRYPOINT ["streamdetect"]
CMD ["run"]
