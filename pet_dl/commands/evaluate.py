"""``python -m pet_dl evaluate``: learned vs classical reconstruction on held-out phantoms.

Examples::

    python -m pet_dl evaluate --config configs/evaluate2d.yaml --out outputs/evaluate2d
    python -m pet_dl evaluate --config configs/evaluate2d.yaml --out outputs/quick \\
        --test-phantoms 2 --realisations 2 --val-phantoms 1      # a few minutes on CPU
    # the classical baselines and the networks in two runs, then one table and plot:
    python -m pet_dl evaluate --config configs/evaluate2d.yaml --out outputs/a --skip networks
    python -m pet_dl evaluate --config configs/evaluate2d.yaml --out outputs/b --skip classical \\
        --network PostUNet --network LPD       # only these networks of the config
    python -m pet_dl evaluate --config configs/evaluate2d.yaml --out outputs/c --skip classical \\
        --checkpoint "My net=model.safetensors" --network "My net"   # a checkpoint of your own
    python -m pet_dl evaluate --merge outputs/a/results.json outputs/b/results.json --out outputs/ab
    python -m pet_dl evaluate --merge old/results.json new/results.json --out outputs/both \
        --rename "v1 (shipped)=v1 (shipped before)"    # a method renamed in every part first

Writes ``results.md`` and ``results.csv`` (PSNR, SSIM, NRMSE, lesion SUVmean / SUVmax
bias per method and reduction factor, mean ± std over noise realisations; ``results.md``
then gives 95 % intervals over phantoms and lesions and the NRMSE difference to OSEM at
full dose, or ``--paired-with`` another row, paired over the same phantoms;
``results.csv`` the standard errors),
``results.json`` (everything, for ``--merge``), ``selection.md`` (OSEM iterations /
post-filter and MAP beta chosen on validation) and ``contrast_noise.png``. See
:mod:`pet_dl.evaluate` for the definitions.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any


def add_parser(subparsers: Any) -> None:
    """Register the ``evaluate`` sub-command."""
    p = subparsers.add_parser(
        "evaluate", help="evaluate networks against OSEM and MAP-RDP on held-out phantoms",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--config", type=Path, help="evaluation config (configs/evaluate2d.yaml)")
    p.add_argument("--out", required=True, type=Path, help="output folder (created if missing)")
    p.add_argument("--test-phantoms", type=int, default=None, help="use the first N test phantoms")
    p.add_argument("--realisations", type=int, default=None, help="noise realisations per test phantom")
    p.add_argument("--val-phantoms", type=int, default=None, help="validation phantoms for the selection")
    p.add_argument("--skip", choices=["classical", "networks"], default=None,
                   help="leave out the classical baselines or the networks")
    p.add_argument("--checkpoint", action="append", default=None, metavar="NAME=PATH",
                   help="add (or replace) a network of the config: display name = checkpoint (repeatable)")
    p.add_argument("--network", action="append", default=None, metavar="NAME",
                   help="evaluate only this network of the config (repeatable)")
    p.add_argument("--merge", type=Path, nargs="+", default=None, metavar="JSON",
                   help="combine results.json files of runs on the same test set (no --config)")
    p.add_argument("--rename", action="append", default=None, metavar="OLD=NEW",
                   help="with --merge: rename a method of the merged runs (repeatable)")
    p.add_argument("--paired-with", default=None, metavar="METHOD[@FACTOR]",
                   help="reference of the paired NRMSE difference in results.md: a method at one "
                   "factor (default OSEM@full), or without @FACTOR the method at each row's factor")
    p.set_defaults(run=run)


def paired_reference(text: str) -> tuple[str, float | None]:
    """``"METHOD@FACTOR"`` -> ``(method, factor)`` (``full`` = 1), ``"METHOD"`` -> ``(method, None)``."""
    from pet_dl.errors import InvalidInputError

    method, at, factor = text.rpartition("@")
    if not at:
        return text.strip(), None
    try:
        value = 1.0 if factor.strip() == "full" else float(factor)
    except ValueError:
        raise InvalidInputError(f"--paired-with needs METHOD[@FACTOR], got {text!r}") from None
    if not method.strip() or not value >= 1:
        raise InvalidInputError(f"--paired-with needs METHOD[@FACTOR] with FACTOR >= 1, got {text!r}")
    return method.strip(), value


def run(args: argparse.Namespace) -> int:
    """Run the evaluation (or merge earlier runs); prints the markdown table."""
    from pet_dl.commands import name_value
    from pet_dl.errors import InvalidInputError
    from pet_dl.evaluate import (
        load_eval_config,
        merge_results,
        rename_methods,
        results_from_json,
        results_markdown,
        run_config,
        write_results,
    )

    if (args.config is None) == (args.merge is None):
        raise InvalidInputError("give exactly one of --config (evaluate) and --merge (combine runs)")
    paired = None if args.paired_with is None else paired_reference(args.paired_with)
    for name in ("test_phantoms", "realisations", "val_phantoms"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise InvalidInputError(f"--{name.replace('_', '-')} must be >= 1, got {value}")
    if args.rename and args.merge is None:
        raise InvalidInputError("--rename goes with --merge")
    names = dict(name_value(text, "--rename", "OLD=NEW") for text in args.rename or [])
    if args.merge is not None:
        parts = [results_from_json(path.read_text()) for path in args.merge]
        methods = [{r["method"] for r in part.rows} for part in parts]
        unknown = sorted(set(names) - set().union(*methods))
        if unknown:
            raise InvalidInputError(f"--rename: {unknown} not among {sorted(set().union(*methods))}")
        parts = [rename_methods(part, {old: new for old, new in names.items() if old in found})
                 for part, found in zip(parts, methods)]
        results = merge_results(parts)
        args.out.mkdir(parents=True, exist_ok=True)
        write_results(results, args.out, f"Merged from {', '.join(map(str, args.merge))}.\n\n", paired)
    else:
        config = load_eval_config(args.config)  # a bad config fails before any output
        for item in args.checkpoint or []:
            name, path = name_value(item, "--checkpoint", "NAME=PATH")
            config["networks"] = {**config["networks"], name: path}
        if args.network:
            unknown = sorted(set(args.network) - set(config["networks"]))
            if unknown:
                raise InvalidInputError(
                    f"--network {unknown} not in the config's networks {sorted(config['networks'])}"
                )
            config["networks"] = {k: v for k, v in config["networks"].items() if k in args.network}
        methods = {"OSEM", "MAP-RDP"} if args.skip != "classical" else set()
        methods |= set(config["networks"]) if args.skip != "networks" else set()
        if paired is not None and paired[0] not in methods:  # before the long evaluation
            raise InvalidInputError(f"--paired-with {args.paired_with!r}: not among {sorted(methods)}")
        args.out.mkdir(parents=True, exist_ok=True)
        results = run_config(
            config, args.out, test_phantoms=args.test_phantoms, realisations=args.realisations,
            val_phantoms=args.val_phantoms, progress=sys.stderr.isatty(),
            classical=args.skip != "classical", networks=args.skip != "networks",
            paired_reference=paired,
        )
    print(results_markdown(results))
    print(f"wrote results.md, results.csv, results.json under {args.out}", file=sys.stderr)
    return 0
