#!/usr/bin/env bash
# Entry point of the pet_dl Docker image (see Dockerfile and docs/serving.md).
#
#   docker run IMAGE serve                      # TorchServe with the packed model
#   docker run IMAGE infer scan.h5 --out /data/out [infer.py options]
#   docker run IMAGE train fit --config configs/<name>.yaml
#   docker run IMAGE <any command>              # e.g. bash, python -m pet_dl ...
set -euo pipefail
APP=/opt/pet_dl
case "${1:-serve}" in
    serve)
        [ "$#" -gt 0 ] && shift
        # Inside the container the inference API listens on PET_DL_BIND (default all
        # interfaces of the container); publish it on the host's loopback only:
        #   docker run -p 127.0.0.1:8080:8080 IMAGE serve
        # The management API stays on the container's loopback (used by HEALTHCHECK).
        config="$(mktemp --suffix=.properties)"
        sed "s#^inference_address=http://127.0.0.1:#inference_address=http://${PET_DL_BIND:-0.0.0.0}:#" \
            "$APP/config.properties" > "$config"
        exec torchserve --start --foreground --ncs \
            --ts-config "$config" \
            --model-store "${PET_DL_MODEL_STORE:-$APP/model_store}" \
            --models "${PET_DL_MODEL_NAME:-pet_dl}=${PET_DL_MODEL_NAME:-pet_dl}.mar" "$@"
        ;;
    infer)
        shift
        exec python "$APP/infer.py" "$@"
        ;;
    train)
        shift
        cd "$APP"
        exec python "$APP/train.py" "$@"
        ;;
    *)
        exec "$@"
        ;;
esac
