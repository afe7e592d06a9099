# The planner daemon: scheduler, sync, selection, reports and the dashboard. No torch inside:
# scoring runs in the worker image.
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY planner ./planner
COPY workers ./workers
COPY integrations ./integrations
RUN pip wheel --no-deps --wheel-dir /wheels .

FROM python:3.11-slim
RUN useradd --create-home --uid 10001 planner
COPY --from=build /wheels /wheels
# torch comes in as a dependency of the package; the daemon image takes the small CPU build.
RUN pip install --no-cache-dir --index-url https://download.pytorch.org/whl/cpu torch \
 && pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels
# the folders compose mounts named volumes on: a new volume takes its folder's owner
RUN mkdir -p /var/lib/planner/artifacts /var/lib/planner/reports /var/lib/planner/bootstrap \
 && chown -R planner /var/lib/planner
USER planner
WORKDIR /home/planner
ENV PLANNER_CONFIG=/etc/planner/planner.toml
EXPOSE 8765
HEALTHCHECK --interval=30s --timeout=5s CMD ["planner", "status", "--check"]
ENTRYPOINT ["planner"]
CMD ["run"]
