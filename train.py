"""Train a learned reconstruction: ``python train.py fit --config configs/<name>.yaml``.

Resume with ``--ckpt_path <file.ckpt>``; see ``docs/training.md``.
"""

from pet_dl.training.cli import main

if __name__ == "__main__":
    main()
