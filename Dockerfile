# The gateway as a container: `entitlements` is the entrypoint, `serve` the default command.
# Migrations are an explicit step (`docker run IMAGE db upgrade`, the `migrate` service in
# compose.yaml) or opt-in (`serve --migrate`); on PostgreSQL `serve` never migrates by itself.

FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml ./
COPY gateway gateway
COPY schema schema
COPY resolvers resolvers
COPY migrations migrations
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOST=0.0.0.0 \
    PORT=8000
RUN groupadd --system --gid 10001 gateway \
    && useradd --system --uid 10001 --gid gateway --create-home --home-dir /var/lib/entitlements gateway
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels
USER 10001:10001
# The default SQLite file (DATABASE_URL unset) lands here: mount a volume to keep it.
WORKDIR /var/lib/entitlements
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('PORT', '8000'), timeout=2)"]
ENTRYPOINT ["entitlements"]
CMD ["serve"]
