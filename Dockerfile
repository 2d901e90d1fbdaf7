# One image for every service: `mailfleet run <service>` picks which; `mailfleet migrate` and
# `mailfleet create-topics` are the init jobs (docker-compose.yml, deploy/helm).
FROM python:3.11-slim
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /app
COPY requirements.lock pyproject.toml README.md ./
RUN pip install --no-cache-dir -r requirements.lock
COPY libs ./libs
COPY services ./services
RUN pip install --no-cache-dir --no-deps -e . \
    && useradd --system --uid 10001 --no-create-home mailfleet
USER 10001
# 8000: the API; 9100: /metrics, /healthz, /readyz of a background service
# (MAILFLEET_METRICS_PORT). SIGTERM: finish or hand back the current batch, exit within 30 s.
EXPOSE 8000 9100
STOPSIGNAL SIGTERM
ENTRYPOINT ["mailfleet"]
