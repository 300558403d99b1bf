# syntax=docker/dockerfile:1
# cart-link-proxy image: build wheels in one stage, install them into a clean slim image in the next.
#   docker build -t cart-link-proxy .
#   docker run --rm -p 8080:8080 -p 9108:9108 -e CART_PROXY_UPSTREAM=http://cart:8081 cart-link-proxy

ARG PYTHON_IMAGE=python:3.11-slim

FROM ${PYTHON_IMAGE} AS builder
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1
# Compilers only here, for any dependency without a wheel for this platform.
RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN pip wheel --wheel-dir /wheels .

FROM ${PYTHON_IMAGE} AS runtime
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
RUN groupadd --system --gid 10001 proxy \
    && useradd --system --uid 10001 --gid proxy --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin proxy
# The wheels are bind-mounted, not copied, so they never become a layer of the final image.
RUN --mount=type=bind,from=builder,source=/wheels,target=/wheels \
    pip install --no-index --find-links=/wheels cart-link-proxy
COPY --chown=root:root config/policy.yaml /etc/cart-link-proxy/policy.yaml
USER 10001:10001
EXPOSE 8080 9108
HEALTHCHECK --interval=15s --timeout=3s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:9108/healthz', timeout=2).status == 200 else 1)"]
# /healthz lives on the metrics port (every path on the proxy port belongs to the cart service).
# SIGTERM starts the graceful drain: readiness goes false, in-flight requests finish, then exit.
STOPSIGNAL SIGTERM
ENTRYPOINT ["cart-link-proxy"]
CMD ["serve", "--config", "/etc/cart-link-proxy/policy.yaml", "--host", "0.0.0.0"]
