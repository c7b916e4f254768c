#!/bin/bash
# Multi-node DDP training with SLURM: one task per GPU, Lightning reads the SLURM env.
#   sbatch scripts/slurm_train.sh configs/brain3d_gpu.yaml
# Adjust --nodes / --gres; keep --ntasks-per-node equal to the GPUs per node
# (Lightning's SLURM detection needs it), and pass the same numbers to the trainer.
#SBATCH --job-name=pet_dl
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=4
#SBATCH --gres=gpu:4
#SBATCH --cpus-per-task=8
#SBATCH --time=24:00:00
#SBATCH --output=outputs/slurm-%j.out
set -euo pipefail

CONFIG=${1:-configs/brain3d_gpu.yaml}
shift || true
GPUS_PER_NODE=${SLURM_NTASKS_PER_NODE:-4}
NODES=${SLURM_JOB_NUM_NODES:-1}
export WANDB_MODE=${WANDB_MODE:-offline}   # `wandb sync outputs/...` later, or set online
export NCCL_ASYNC_ERROR_HANDLING=1

mkdir -p outputs
# Resume automatically from the last checkpoint when the job is requeued (the config's
# trainer.default_root_dir/checkpoints: outputs/brain3d/ for configs/brain3d_gpu.yaml).
LAST=$(dirname "$CONFIG")/../outputs/$(basename "$CONFIG" .yaml | sed 's/_gpu$//')/checkpoints/last.ckpt
RESUME=()
if [[ -f "$LAST" ]]; then RESUME=(--ckpt_path "$LAST"); fi

srun .venv/bin/python train.py fit --config "$CONFIG" \
    --trainer.devices "$GPUS_PER_NODE" --trainer.num_nodes "$NODES" \
    "${RESUME[@]}" "$@"
