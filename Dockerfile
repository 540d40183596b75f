# syntax=docker/dockerfile:1
# The tunefleet worker image: what each pod of `tunefleet k8s apply` runs (docs/kubernetes.md).
#
#   docker build -t tunefleet:0.1.0 .                                   # scikit-learn objectives
#   docker build --build-arg EXTRAS=sklearn,xgboost -t tunefleet:0.1.0-xgb .
#   docker build --build-arg EXTRAS=torch --build-arg DATASETS=fashion-mnist -t tunefleet:0.1.0-torch .
#   docker build --build-arg EXTRAS=torch --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu128 \
#     -t tunefleet:0.1.0-cuda .                                          # CUDA build of torch
#
# EXTRAS: tunefleet's pip extras (sklearn, xgboost, torch, keras), comma-separated; empty for none.
# TORCH_INDEX: where torch comes from; the default CPU-only index keeps the image ~2 GB smaller
#   than PyPI's CUDA build (set it empty for PyPI's). Versions are pinned by docker/constraints.txt.
# DATASETS: data sets baked in with `tunefleet data fetch` (space-separated), read from
#   $TUNEFLEET_DATA_DIR, so that trials never download.
ARG PYTHON_IMAGE=python:3.12-slim-trixie

FROM ${PYTHON_IMAGE} AS build
ARG EXTRAS=sklearn
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_CONSTRAINT=/src/docker/constraints.txt
WORKDIR /src
COPY docker/constraints.txt docker/
COPY pyproject.toml README.md ./
COPY src/ src/
RUN python -m venv /opt/tunefleet \
    && /opt/tunefleet/bin/pip install ${TORCH_INDEX:+--extra-index-url "$TORCH_INDEX"} \
        dumb-init==1.2.5.post1 ".${EXTRAS:+[$EXTRAS]}"

FROM ${PYTHON_IMAGE}
ARG DATASETS=""
ENV PATH=/opt/tunefleet/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    TUNEFLEET_DATA_DIR=/opt/tunefleet-data
# A numeric, unprivileged user: the Job's runAsUser and runAsNonRoot expect 10001.
RUN groupadd --gid 10001 tunefleet \
    && useradd --uid 10001 --gid 10001 --create-home --shell /usr/sbin/nologin tunefleet
COPY --from=build /opt/tunefleet /opt/tunefleet
# Data sets are fetched at build time (as root, readable by all), never by a running trial.
RUN mkdir -p /opt/tunefleet-data \
    && for dataset in ${DATASETS}; do tunefleet data fetch "$dataset" --dir /opt/tunefleet-data; done
USER 10001:10001
WORKDIR /home/tunefleet
# dumb-init is PID 1: it forwards SIGTERM to the worker (which hands its trial back and exits 75)
# and reaps the processes joblib and data loaders start. Python as PID 1 would ignore SIGTERM
# until its handler is installed. The Job passes `tunefleet worker ...` as args.
ENTRYPOINT ["dumb-init", "--"]
CMD ["tunefleet", "--help"]
