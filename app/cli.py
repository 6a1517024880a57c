"""The ``gatescope`` command: train, report, list and launch the app."""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from dataclasses import fields
from pathlib import Path

DEFAULT_RUN = Path(__file__).resolve().parent.parent / "assets" / "mnist5k" / "dynamic"
APP_SCRIPT = Path(__file__).resolve().parent / "main.py"


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    from analysis import DatasetError, TrainError
    from models import RunError

    try:
        return args.func(args) or 0
    except (RunError, DatasetError, TrainError, FileNotFoundError) as e:
        print(f"gatescope: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("gatescope: interrupted; finished epochs are saved and the next run resumes", file=sys.stderr)
        return 130


def _parser() -> argparse.ArgumentParser:
    from analysis.training import TrainConfig

    parser = argparse.ArgumentParser(prog="gatescope", description=__doc__)
    sub = parser.add_subparsers(metavar="COMMAND")

    p = sub.add_parser("train", help="train an ungated baseline and a dynamic network",
                       description="Trains OUT/pretrained, OUT/baseline and OUT/dynamic; resumes an interrupted run.")
    p.add_argument("out", type=Path, help="output folder")
    for f in fields(TrainConfig):
        p.add_argument(f"--{f.name.replace('_', '-')}", type=type(f.default), default=f.default,
                       help=f"(default: {f.default})")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=_train)

    p = sub.add_parser("report", help="accuracy, MACs and path diversity of a run")
    p.add_argument("run", type=Path)
    p.add_argument("--baseline", type=Path, help="an ungated run to compare accuracy with")
    p.add_argument("--dataset", help="dataset spec (default: the run's own)")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.set_defaults(func=_report)

    p = sub.add_parser("list", help="registered architectures and dataset kinds")
    p.set_defaults(func=_list)

    p = sub.add_parser("app", help="launch the Streamlit workbench")
    p.add_argument("runs", nargs="*", type=Path, help=f"run folders (default: the shipped {DEFAULT_RUN.name} model)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1, this machine only)")
    p.add_argument("--port", type=int, default=8501)
    p.add_argument("--max-upload-mb", type=int, default=8, help="largest accepted upload")
    p.set_defaults(func=_app)
    return parser


def _train(args: argparse.Namespace) -> int:
    from analysis.training import TrainConfig, train

    config = TrainConfig(**{f.name: getattr(args, f.name) for f in fields(TrainConfig)})
    command = "gatescope " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    metas = train(config, args.out, progress=not args.no_progress, command=command)
    for phase, meta in metas.items():
        print(f"{phase}: test accuracy {meta.metrics['test_accuracy']:.4f}, "
              f"mean MACs ratio {meta.metrics['macs_ratio']['mean']:.3f} -> {args.out / phase}")
    return 0


def _report(args: argparse.Namespace) -> int:
    from analysis.report import format_report, report_for_path

    report = report_for_path(args.run, args.baseline, args.dataset)
    print(json.dumps(report, indent=2) if args.json else format_report(report))
    return 0


def _list(args: argparse.Namespace) -> int:
    from analysis import list_datasets
    from models import list_models

    print("architectures:", ", ".join(list_models()))
    print("datasets:", ", ".join(list_datasets()))
    return 0


def _app(args: argparse.Namespace) -> int:
    from models import read_meta

    runs = [p.resolve() for p in args.runs] or [DEFAULT_RUN]
    for run in runs:
        read_meta(run)  # fail here, with a clear message, rather than inside the page
    cmd = [
        sys.executable, "-m", "streamlit", "run", str(APP_SCRIPT),
        "--server.address", args.host, "--server.port", str(args.port), "--server.headless", "true",
        "--server.maxUploadSize", str(args.max_upload_mb), "--browser.gatherUsageStats", "false", "--client.toolbarMode", "minimal",
        "--", *map(str, runs),
    ]
    print(f"gatescope: serving http://{args.host}:{args.port}", flush=True)
    os.execv(sys.executable, cmd)
    return 0  # not reached


if __name__ == "__main__":
    sys.exit(main())
