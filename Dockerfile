# statekeeper: the daemon and its CLI. docker-compose.yml runs the migration and the daemon from this image.
FROM python:3.11-slim

RUN useradd --create-home --uid 10001 statekeeper
WORKDIR /app
COPY pyproject.toml constraints.txt README.md alembic.ini ./
COPY statekeeper ./statekeeper
COPY migrations ./migrations
RUN pip install --no-cache-dir --disable-pip-version-check -c constraints.txt . \
    && rm -rf /root/.cache

USER statekeeper
ENTRYPOINT ["statekeeper"]
CMD ["--help"]
