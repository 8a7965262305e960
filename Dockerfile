# statekeeper: the daemon and its CLI. docker-compose.yml runs the migration, the simulated venue, the ingest and
# the projector daemons from this image.
FROM python:3.11-slim

RUN useradd --create-home --uid 10001 statekeeper
WORKDIR /app
COPY pyproject.toml constraints.txt README.md alembic.ini ./
COPY statekeeper ./statekeeper
COPY migrations ./migrations
RUN pip install --no-cache-dir --disable-pip-version-check -c constraints.txt . \
    && rm -rf /root/.cache

USER statekeeper
# Output reaches `docker compose logs` as it is written (the simulator's banner is printed, not logged).
ENV PYTHONUNBUFFERED=1
ENTRYPOINT ["statekeeper"]
CMD ["--help"]
