# vaesearch in a container: the image that KubeRay's head and workers run (deploy/kuberay/).
#   docker build -t vaesearch:cpu .                              torch's CPU build: a head, or CPU workers
#   docker build --build-arg VARIANT=cuda -t vaesearch:cuda .    PyPI's torch, which carries CUDA: GPU workers
# The project is installed with the versions its test suite passed on (deploy/constraints.txt), and runs as
# the unprivileged user `ray` (uid 1000, as KubeRay's own images). No usage data leaves the container.
ARG PYTHON=3.11
FROM python:${PYTHON}-slim-bookworm

ARG VARIANT=cpu
ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    RAY_USAGE_STATS_ENABLED=0 \
    MLFLOW_DISABLE_TELEMETRY=true \
    DO_NOT_TRACK=true \
    VAESEARCH_HOME=/home/ray/vaesearch-home

SHELL ["/bin/bash", "-o", "pipefail", "-c"]
RUN useradd --create-home --uid 1000 --shell /bin/bash ray
WORKDIR /home/ray/vaesearch
COPY deploy/constraints.txt /tmp/constraints.txt
COPY pyproject.toml README.md ./
COPY vae vae
COPY search search
COPY analysis analysis
COPY mlflow_server mlflow_server
COPY configs configs
RUN case "${VARIANT}" in \
      cpu) index=(--extra-index-url https://download.pytorch.org/whl/cpu) ;; \
      cuda) index=() ;; \
      *) echo "VARIANT must be cpu or cuda, got ${VARIANT}" >&2; exit 2 ;; \
    esac \
    && pip install "${index[@]}" --constraint /tmp/constraints.txt . \
    && rm /tmp/constraints.txt \
    && chown -R ray:ray /home/ray
USER 1000
CMD ["vaesearch", "--help"]
