#!/usr/bin/env bash
# Entry point of the pet_dl Docker image (see Dockerfile and docs/serving.md). The image
# runs it under tini -g (PID 1), which passes SIGTERM to the whole process group: the
# torchserve launcher, the Java frontend and the Python workers all stop.
#
#   docker run IMAGE serve                      # TorchServe with the packed model
#   docker run IMAGE infer scan.h5 --out /data/out [infer.py options]
#   docker run IMAGE train fit --config configs/<name>.yaml
#   docker run IMAGE <any command>              # e.g. bash, python -m pet_dl ...
#
# serve reads: PET_DL_BIND (inference API address inside the container, default 0.0.0.0),
# PET_DL_TOKEN_AUTH (on | off; off only with PET_DL_BIND=127.0.0.1), PET_DL_KEY_FILE (where
# TorchServe writes key_file.json), PET_DL_TOKEN_EXPIRATION_MIN, PET_DL_MAX_REQUEST_SIZE /
# PET_DL_MAX_RESPONSE_SIZE (bytes), PET_DL_THREADS (worker threads, default nproc),
# PET_DL_MODEL_NAME, PET_DL_MODEL_STORE.
set -euo pipefail
APP="${PET_DL_APP:-/opt/pet_dl}"

die() {
    echo "error: $*" >&2
    exit 2
}

number() {  # number NAME VALUE: VALUE must be a positive integer
    case "$2" in
        '' | *[!0-9]* | 0) die "$1 must be a positive integer, got '$2'" ;;
    esac
}

case "${1:-serve}" in
    serve)
        [ "$#" -gt 0 ] && shift
        bind="${PET_DL_BIND:-0.0.0.0}"
        case "$bind" in
            *[!0-9A-Za-z.:_-]* | '') die "PET_DL_BIND must be a host address, got '$bind'" ;;
        esac
        request="${PET_DL_MAX_REQUEST_SIZE:-8388608}"
        response="${PET_DL_MAX_RESPONSE_SIZE:-8388608}"
        expiry="${PET_DL_TOKEN_EXPIRATION_MIN:-1440}"
        number PET_DL_MAX_REQUEST_SIZE "$request"
        number PET_DL_MAX_RESPONSE_SIZE "$response"
        number PET_DL_TOKEN_EXPIRATION_MIN "$expiry"
        config="$(mktemp --suffix=.properties)"
        # The management and metrics APIs stay on the container's loopback (HEALTHCHECK).
        sed -e "s#^inference_address=http://127.0.0.1:#inference_address=http://${bind}:#" \
            -e "s#^max_request_size=.*#max_request_size=${request}#" \
            -e "s#^max_response_size=.*#max_response_size=${response}#" \
            -e "s#^token_expiration_min=.*#token_expiration_min=${expiry}#" \
            "$APP/config.properties" > "$config"
        case "${PET_DL_TOKEN_AUTH:-on}" in
            on)  # TorchServe writes key_file.json in its working folder
                sed -i '/^disable_token_authorization=/d' "$config" ;;
            off)
                [ "$bind" = 127.0.0.1 ] \
                    || die "PET_DL_TOKEN_AUTH=off needs PET_DL_BIND=127.0.0.1 (the API would be open)" ;;
            *) die "PET_DL_TOKEN_AUTH must be on or off, got '${PET_DL_TOKEN_AUTH}'" ;;
        esac
        key_file="${PET_DL_KEY_FILE:-$HOME/key_file.json}"
        mkdir -p "$(dirname "$key_file")"
        cd "$(dirname "$key_file")"
        # Workers: idle OpenMP threads sleep instead of spinning against numba's
        # (docs/performance.md, "Serving"); one thread count for torch, OpenMP, numba.
        threads="${PET_DL_THREADS:-$(nproc)}"
        number PET_DL_THREADS "$threads"
        export OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-PASSIVE}"
        export OMP_NUM_THREADS="${OMP_NUM_THREADS:-$threads}"
        export NUMBA_NUM_THREADS="${NUMBA_NUM_THREADS:-$threads}"
        export MKL_NUM_THREADS="${MKL_NUM_THREADS:-$threads}"
        name="${PET_DL_MODEL_NAME:-pet_dl}"
        exec torchserve --start --foreground --ncs \
            --ts-config "$config" \
            --model-store "${PET_DL_MODEL_STORE:-$APP/model_store}" \
            --models "${name}=${name}.mar" "$@"
        ;;
    infer)
        shift
        export OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-PASSIVE}"
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
