"""Train a learned reconstruction: ``python train.py fit --config configs/<name>.yaml``.

The config is read on top of ``configs/base.yaml``; ``--print_config`` shows the result.
Resume with ``--ckpt_path <file.ckpt>``; see ``docs/training.md``.
"""

import os

# Idle OpenMP threads sleep instead of spinning: on shared CPUs spinning threads slowed
# training steps several-fold. Must be set before torch is imported.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from pet_dl.training.cli import main  # noqa: E402

if __name__ == "__main__":
    main()
