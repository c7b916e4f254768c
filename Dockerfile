# pet_dl: training, inference (infer.py) and a TorchServe endpoint in one CUDA image.
#
#   docker build -t pet_dl .
#   docker run --gpus all --memory 6g -p 127.0.0.1:8080:8080 --name pet pet_dl serve
#   docker exec pet cat /var/lib/pet_dl/key_file.json     # token authorization is on: the keys
#   docker run --gpus all -v "$PWD/data:/data" pet_dl infer /data/scan.h5 --out /data/out
#   docker run --gpus all -v "$PWD:/work" pet_dl train fit --config configs/<name>.yaml
#
# Memory: give the container a limit (docker run --memory): 3 GiB on CPU, 6 GiB with a GPU
# for the 2D model (the JVM is capped at 512 MiB heap + 256 MiB buffers, bodies at 8 MiB,
# scans at the model's geometry; docs/serving.md, "Memory"). tini is PID 1 and signals the
# whole process group, so `docker stop` (SIGTERM) stops the frontend and the workers.
#
# See docs/serving.md. Pinned base: PyTorch 2.5.1, CUDA 12.4, cuDNN 9 runtime (Python 3.11).
ARG BASE_IMAGE=pytorch/pytorch:2.5.1-cuda12.4-cudnn9-runtime

# ---------------------------------------------------------------- build: wheel, venv, .mar
FROM ${BASE_IMAGE} AS build
WORKDIR /src
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
COPY pyproject.toml README.md ./
COPY pet_dl ./pet_dl
# The venv sees the base image's torch (system site packages) and adds pet_dl + serve extra.
RUN python -m venv --system-site-packages /opt/venv \
    && /opt/venv/bin/pip install ".[serve]"
COPY scripts/build_mar.sh ./scripts/build_mar.sh
RUN PATH="/opt/venv/bin:$PATH" scripts/build_mar.sh \
        pet_dl/assets/pet_dl_2d.safetensors /opt/model_store pet_dl

# ---------------------------------------------------------------- runtime
FROM ${BASE_IMAGE} AS runtime
LABEL org.opencontainers.image.title="pet_dl" \
      org.opencontainers.image.description="pet_dl reconstruction: TorchServe endpoint, infer.py, training. Run with --memory 3g (CPU) or 6g (GPU); see docs/serving.md"
# TorchServe's frontend needs a Java runtime.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends openjdk-17-jre-headless tini \
    && rm -rf /var/lib/apt/lists/*
RUN groupadd --system --gid 10001 pet \
    && useradd --system --uid 10001 --gid pet --create-home --home-dir /var/lib/pet_dl pet
ENV PATH="/opt/venv/bin:$PATH" \
    PYTHONUNBUFFERED=1 \
    WANDB_MODE=offline \
    OMP_WAIT_POLICY=PASSIVE \
    PET_DL_MODEL_NAME=pet_dl \
    PET_DL_MODEL_STORE=/opt/pet_dl/model_store \
    PET_DL_KEY_FILE=/var/lib/pet_dl/key_file.json
COPY --from=build /opt/venv /opt/venv
COPY --from=build --chown=pet:pet /opt/model_store /opt/pet_dl/model_store
COPY --chown=pet:pet infer.py train.py /opt/pet_dl/
COPY --chown=pet:pet configs /opt/pet_dl/configs
COPY --chown=pet:pet pet_dl/serving/config.properties /opt/pet_dl/config.properties
COPY --chown=pet:pet pet_dl/serving/docker_entrypoint.sh /opt/pet_dl/entrypoint.sh
USER 10001:10001
WORKDIR /var/lib/pet_dl
EXPOSE 8080
# Ready = a READY worker whose model loaded (/ping stays healthy even when loading failed);
# the model name comes from PET_DL_MODEL_NAME, the management key from PET_DL_KEY_FILE.
HEALTHCHECK --interval=30s --timeout=10s --start-period=120s --retries=3 \
    CMD ["python", "-m", "pet_dl.serving.healthcheck", "--url", "http://127.0.0.1:8081"]
ENTRYPOINT ["/usr/bin/tini", "-g", "--", "/opt/pet_dl/entrypoint.sh"]
CMD ["serve"]
