"""``ssfdan-train``: train a segmenter with SSF-DAN (or a baseline) from a YAML config and overrides."""
from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from ..models.verified_io import CheckpointError
from .config import ConfigError, TrainConfig, load_config
from .guards import DriverError


def parser() -> argparse.ArgumentParser:
    """The command-line interface.

    Shapes: n/a.
    """
    keys = ", ".join(TrainConfig.__dataclass_fields__)
    p = argparse.ArgumentParser(
        prog="ssfdan-train",
        description="Domain-adaptive segmentation training (SSF-DAN and the baselines of its ablation table).",
        epilog=f"Overrides are key=value pairs read as YAML, applied after the config file. Keys: {keys}",
    )
    p.add_argument("--config", help="YAML config (default: the built-in synthetic run, configs/synthetic.yaml)")
    p.add_argument("--print-config", action="store_true", help="print the resolved config as YAML and exit")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. iterations=200")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``ssfdan-train`` and ``python -m ssfdan_ext.train``; returns the exit status (0; 2 when the
    run cannot start or continue as asked; 3 when it diverged: see :mod:`ssfdan_ext.train.guards`).

    Shapes: n/a.
    """
    args = parser().parse_args(argv)
    try:
        cfg = load_config(args.config, args.overrides)
    except (ConfigError, FileNotFoundError) as err:
        print(f"ssfdan-train: error: {err}", file=sys.stderr)
        return 2
    if args.print_config:
        import yaml

        print(yaml.safe_dump(cfg.to_dict(), sort_keys=False), end="")
        return 0
    from .loop import train

    try:
        train(cfg)
    except (ConfigError, CheckpointError, DriverError) as err:
        # Driver errors are one line: they name the key, the file or the other run, and a traceback adds nothing.
        print(f"ssfdan-train: error: {err}", file=sys.stderr)
        return getattr(err, "exit_code", 2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
