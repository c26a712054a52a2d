# Payware: the same `payware serve` the README runs, as a non-root service.
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY proxy ./proxy
COPY metering ./metering
COPY config ./config
RUN python -m venv /opt/payware \
 && /opt/payware/bin/pip install --no-cache-dir --disable-pip-version-check '.[postgres]'

FROM python:3.11-slim
ENV PATH=/opt/payware/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    LITELLM_LOCAL_MODEL_COST_MAP=True \
    PAYWARE_HOST=0.0.0.0 \
    PAYWARE_PORT=8080 \
    PAYWARE_LEDGER=sqlite:////var/lib/payware/payware.db \
    PAYWARE_JOURNAL=/var/lib/payware/payware.journal
COPY --from=build /opt/payware /opt/payware
RUN useradd --system --uid 10001 --home-dir /var/lib/payware --create-home payware
USER payware
WORKDIR /var/lib/payware
VOLUME ["/var/lib/payware"]
EXPOSE 8080
HEALTHCHECK --interval=15s --timeout=3s --start-period=20s --retries=3 \
  CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('PAYWARE_PORT', '8080'), timeout=2)"]
# Mount your own config and point PAYWARE_CONFIG at it; without one the embedded default runs.
ENTRYPOINT ["payware"]
CMD ["serve"]
