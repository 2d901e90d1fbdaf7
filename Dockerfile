# One image for every service: `mailfleet run <service>` picks which.
FROM python:3.11-slim
WORKDIR /app
COPY requirements.lock pyproject.toml README.md ./
RUN pip install --no-cache-dir -r requirements.lock
COPY libs ./libs
COPY services ./services
RUN pip install --no-cache-dir --no-deps -e .
ENTRYPOINT ["mailfleet"]
