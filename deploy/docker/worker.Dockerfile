# A GPU scoring worker: Celery on the `score` queue with a CUDA build of torch.
FROM pytorch/pytorch:2.5.1-cuda12.4-cudnn9-runtime
RUN useradd --create-home --uid 10001 planner
WORKDIR /src
COPY pyproject.toml README.md ./
COPY planner ./planner
COPY workers ./workers
COPY integrations ./integrations
# The base image's torch satisfies the package's range, so pip keeps it.
RUN pip install --no-cache-dir . && rm -rf /src
# the pixel cache's and the bootstrap networks' volumes: a named volume takes its folder's
# owner when first mounted
RUN mkdir -p /var/cache/planner /var/lib/planner/bootstrap \
 && chown planner /var/cache/planner /var/lib/planner/bootstrap
USER planner
WORKDIR /home/planner
ENV PLANNER_CONFIG=/etc/planner/planner.toml
ENTRYPOINT ["planner"]
CMD ["worker", "--queues", "score"]
