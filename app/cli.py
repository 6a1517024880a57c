"""The ``gatescope`` command: train, report, list and launch the app."""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from contextlib import contextmanager
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
    except (RunError, DatasetError, TrainError, FileNotFoundError, ValueError) as e:
        print(f"gatescope: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("gatescope: interrupted; finished epochs are saved and the next run resumes", file=sys.stderr)
        return 130


def _parser() -> argparse.ArgumentParser:
    from analysis.scratch import GateConfig, ScratchConfig
    from analysis.training import TrainConfig

    parser = argparse.ArgumentParser(prog="gatescope", description=__doc__)
    sub = parser.add_subparsers(metavar="COMMAND")

    p = sub.add_parser("train", help="train an ungated baseline and a dynamic network",
                       description="Trains OUT/pretrained, OUT/baseline and OUT/dynamic; resumes an interrupted run.")
    p.add_argument("out", type=Path, help="output folder")
    _add_config_options(p, TrainConfig)
    p.set_defaults(func=_train)

    prune = sub.add_parser("prune", help="pruning from scratch: learn gates, search, build, train")
    psub = prune.add_subparsers(metavar="STEP")
    p = psub.add_parser("learn-gates", help="learn channel gates on frozen (random) weights into a run folder")
    p.add_argument("out", type=Path)
    _add_config_options(p, GateConfig)
    p.set_defaults(func=_learn_gates)
    p = psub.add_parser("search", help="print the structure (gates run) or mask threshold (dynamic run) for a target")
    p.add_argument("run", type=Path)
    p.add_argument("--target", type=float, default=0.5, help="MACs reduction p (default: 0.5)")
    p.set_defaults(func=_search)
    p = psub.add_parser("build", help="build the searched structure as a narrower, untrained run folder")
    p.add_argument("gates_run", type=Path)
    p.add_argument("out", type=Path)
    p.add_argument("--target", type=float, default=0.5, help="MACs reduction p (default: 0.5)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_build)
    p = psub.add_parser("train", help="train a built structure from scratch with the Scratch-B budget")
    p.add_argument("built_run", type=Path)
    p.add_argument("out", type=Path)
    _add_config_options(p, ScratchConfig)
    p.set_defaults(func=_train_pruned)

    p = sub.add_parser("report", help="accuracy, MACs and path diversity of a run")
    p.add_argument("run", type=Path)
    p.add_argument("--baseline", type=Path, help="an ungated run to compare accuracy with")
    p.add_argument("--dataset", help="dataset spec (default: the run's own)")
    form = p.add_mutually_exclusive_group()
    form.add_argument("--json", action="store_true", help="print JSON instead of text")
    form.add_argument("--audit-markdown", action="store_true",
                      help="print only the stored detection audit and compute attack as Markdown tables (no data needed)")
    form.add_argument("--html", type=Path, metavar="OUT.html",
                      help="write one self-contained HTML file to present (opens offline): the model card, MACs, "
                           "path health, a Sankey per class, and the map and detection audit where analysed")
    p.set_defaults(func=_report)

    p = sub.add_parser("analyze", help="attacks, decision features, detectors and UMAP into RUN/analysis",
                       description="Reuses what RUN/analysis already holds for the same parameters and weights.")
    p.add_argument("run", type=Path)
    p.add_argument("--limit", type=int, default=0, help="analyse only the first N images of the split (default: all)")
    p.add_argument("--split", default="test", choices=["test", "train", "all"], help="all: train then test (default: test)")
    p.add_argument("--attacks", nargs="+", default=None,
                   help="(default: fgsm pgd deepfool cw_l2 cw_l2_k10 cw_l2_k20 pgd_margin; none: features and map only)")
    p.add_argument("--attack-param", action="append", default=[], metavar="ATTACK.NAME=VALUE",
                   help="override an attack default, e.g. pgd.eps=0.1 (repeatable)")
    p.add_argument("--detectors", nargs="+", default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--reference", type=int, default=1000,
                   help="clean training images for the detectors' statistics (Lee's Mahalanobis: all; default 1000)")
    p.add_argument("--no-adaptive", action="store_true", help="skip the adaptive attacks")
    p.add_argument("--no-map", action="store_true",
                   help="skip the UMAP of decision features (the map page computes it when first opened)")
    p.add_argument("--adaptive-limit", type=int, default=1000, help="test-side inputs attacked adaptively per detector")
    p.add_argument("--no-simplified", action="store_true", help="only the papers' baselines, not the simplified variants")
    p.add_argument("--compute-eps", nargs="*", type=float, default=None, metavar="EPS255",
                   help="budgets of the compute (MACs) attack in 1/255 units (default: 2 4 8; none given: skip)")
    p.add_argument("--compute-limit", type=int, default=0, help="images given to the compute attack (default: all)")
    p.add_argument("--force", action="store_true", help="recompute everything")
    p.set_defaults(func=_analyze)

    from models.official import ARCHS, FORMATS

    p = sub.add_parser("import", help="turn torch.save'd weights (.pt/.pth) into a run folder, safely",
                       description="Reads WEIGHTS with torch.load(weights_only=True): tensors only, nothing "
                                   "in the file is executed. The architecture, classes and normalisation come "
                                   "from the run folder given with --like, or, for a file of the papers' code "
                                   "(--from), from --arch and --classes. "
                                   + " ".join(f"{k}: {v}." for k, v in FORMATS.items()))
    p.add_argument("weights", type=Path, help="a .pt/.pth state dict, or the --from code's checkpoint or gates file")
    p.add_argument("out", type=Path, help="run folder to write")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--like", type=Path, help="a run folder whose model.json describes these weights")
    source.add_argument("--from", dest="official", choices=list(FORMATS), help="the papers' code that wrote WEIGHTS")
    p.add_argument("--arch", choices=list(ARCHS), help="with --from: the reference architecture WEIGHTS holds")
    p.add_argument("--classes", choices=["cifar10"], default="cifar10",
                   help="with --from: the dataset the network was trained on (default: cifar10)")
    p.set_defaults(func=_import)

    p = sub.add_parser("export", help="write a run as an ONNX file, checked against PyTorch in onnxruntime",
                       description="A static or pruned run (prune build) exports as it is; a dynamic run exports "
                                   "with its decisions inside the graph. OUT is written only when onnxruntime's "
                                   "logits equal PyTorch's within 1e-4 on the run's test split.")
    p.add_argument("run", type=Path)
    p.add_argument("out", type=Path, help="the .onnx file to write")
    p.add_argument("--mask-threshold", type=float, default=None, metavar="T",
                   help="dynamic runs: mask entries below T become 0 (default: the masks as trained)")
    p.add_argument("--limit", type=int, default=0, help="check on the first N test images only (default: all)")
    p.set_defaults(func=_export)

    p = sub.add_parser("list", help="registered architectures, dataset kinds, attacks and detectors")
    p.set_defaults(func=_list)

    p = sub.add_parser("app", help="launch the Streamlit workbench")
    p.add_argument("runs", nargs="*", type=Path, help=f"run folders (default: the shipped {DEFAULT_RUN.name} model)")
    p.add_argument("--root", type=Path, action="append", default=[],
                   help="a folder searched for run folders, listed in the sidebar (repeatable)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1, this machine only)")
    p.add_argument("--port", type=int, default=8501)
    p.add_argument("--max-upload-mb", type=int, default=8, help="largest accepted upload")
    p.add_argument("--data", action="append", default=[], metavar="NAME=DIR",
                   help="where this machine keeps a dataset that runs name without a folder, e.g. cifar10=~/data/cifar10")
    p.set_defaults(func=_app)
    return parser


def _add_config_options(parser: argparse.ArgumentParser, config_cls) -> None:
    """One --option per field of a config dataclass, with its default."""
    for f in fields(config_cls):
        parser.add_argument(f"--{f.name.replace('_', '-')}", type=type(f.default), default=f.default,
                            help=f"(default: {f.default!r})")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def _config(config_cls, args: argparse.Namespace):
    return config_cls(**{f.name: getattr(args, f.name) for f in fields(config_cls)})


def _command() -> str:
    return "gatescope " + " ".join(shlex.quote(a) for a in sys.argv[1:])


@contextmanager
def _torchrun():
    """Join torchrun's process group when started by torchrun (no-op otherwise); yields whether
    this is the process that prints and writes."""
    from analysis import distributed

    distributed.setup()
    try:
        yield distributed.is_main()
    finally:
        distributed.cleanup()


def _train(args: argparse.Namespace) -> int:
    from analysis.training import TrainConfig, train

    with _torchrun() as main:
        metas = train(_config(TrainConfig, args), args.out, progress=not args.no_progress, command=_command())
    for phase, meta in metas.items() if main else ():
        print(f"{phase}: test accuracy {meta.metrics['test_accuracy']:.4f}, "
              f"mean MACs ratio {meta.metrics['macs_ratio']['mean']:.3f} -> {args.out / phase}")
    return 0


def _learn_gates(args: argparse.Namespace) -> int:
    from analysis.scratch import GateConfig, learn_gates

    meta = learn_gates(_config(GateConfig, args), args.out, progress=not args.no_progress, command=_command())
    print(f"gates learned -> {args.out} (test accuracy with frozen weights {meta.metrics['test_accuracy']:.4f})")
    return 0


def _search(args: argparse.Namespace) -> int:
    from analysis.pruning import MaskSearch, mask_banks, refined_mask_threshold
    from analysis.scratch import search_structure
    from models import cost_model, load_run

    run = load_run(args.run)
    if run.meta.arch_args.get("channel_gates"):
        s = search_structure(args.run, args.target)
        print(f"{s.message}\nwidths {s.widths} (of {s.full_widths})\nMACs {s.macs:,.0f} of {s.full_macs:,.0f}; "
              f"params {s.params:,.0f} of {s.full_params:,.0f}")
    elif run.meta.arch_args.get("gated"):
        from analysis import collect
        from analysis.datasets import load_run_dataset

        split = load_run_dataset(run.meta, "test")
        out = collect(run.model, split)
        search = MaskSearch(cost_model(run.model, tuple(run.meta.input_shape)), mask_banks(run.model), out.paths)
        t, pruned = refined_mask_threshold(run.model, split, search, args.target)
        print(f"{t.message}\naccuracy without retraining {pruned.accuracy:.4f} (unthresholded {out.accuracy:.4f})")
    else:
        print(f"gatescope: error: {args.run} has neither channel gates nor mask banks", file=sys.stderr)
        return 1
    return 0


def _build(args: argparse.Namespace) -> int:
    from analysis.scratch import build_pruned

    structure, _ = build_pruned(args.gates_run, args.target, args.out, seed=args.seed)
    print(f"{structure.message}; widths {structure.widths} -> {args.out} (untrained)")
    return 0


def _train_pruned(args: argparse.Namespace) -> int:
    from analysis.scratch import ScratchConfig, train_pruned

    meta = train_pruned(args.built_run, args.out, _config(ScratchConfig, args), progress=not args.no_progress,
                        command=_command())
    print(f"trained from scratch -> {args.out}: test accuracy {meta.metrics['test_accuracy']:.4f}")
    return 0


def _report(args: argparse.Namespace) -> int:
    from analysis.report import format_detection, format_report, markdown_detection, markdown_timings, report_for_path
    from analysis.store import AnalysisStore
    from models import load_run
    from models.files import dumps_json

    if args.html:
        import time

        from app.html_report import write_html_report

        t0 = time.perf_counter()
        out = write_html_report(load_run(args.run), args.html, dataset=args.dataset, progress=True,
                                baseline=load_run(args.baseline) if args.baseline else None,
                                log=lambda s: print(f"[{time.perf_counter() - t0:5.0f} s] {s}", flush=True))
        print(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB)")
        return 0
    store = AnalysisStore(load_run(args.run))
    detection = store.data("detection") if store.params("detection") is not None else None
    if args.audit_markdown:
        if detection is None:
            print(f"no detection results: run gatescope analyze {args.run}", file=sys.stderr)
            return 1
        print(markdown_detection(detection, store.data("compute") if store.params("compute") is not None else None))
        if "clean" in store.entries():  # the whole analysis is here, not only its shipped tables
            print("\nWhat each step cost (as recorded when it was computed):\n\n" + markdown_timings(store.entries()))
        return 0
    report = report_for_path(args.run, args.baseline, args.dataset)
    if args.json:
        print(dumps_json({**report, "detection": detection}))
        return 0
    print(format_report(report))
    print("\n" + (format_detection(detection) if detection else f"no detection results: run gatescope analyze {args.run}"))
    return 0


def _import(args: argparse.Namespace) -> int:
    from models import read_meta
    from models.convert import import_torch_weights

    if args.official:
        from analysis.datasets import CIFAR10_CLASSES
        from models.official import ARCHS, import_official

        if args.arch is None:
            raise ValueError(f"--from {args.official} needs --arch (one of {', '.join(ARCHS)})")
        meta = import_official(args.weights, args.out, fmt=args.official, arch=args.arch, dataset=args.classes,
                               class_names=CIFAR10_CLASSES)
    else:
        meta = import_torch_weights(args.weights, read_meta(args.like), args.out)
    print(f"wrote {args.out} ({meta.arch}, weights SHA-256 {meta.weights_sha256[:12]}...)")
    return 0


def _export(args: argparse.Namespace) -> int:
    from analysis.deploy import export_run, onnx_latency
    from models import read_meta
    from models.export import ExportError

    try:
        check = export_run(args.run, args.out, mask_threshold=args.mask_threshold, limit=args.limit)
        latency = onnx_latency(args.out.read_bytes(), tuple(read_meta(args.run).input_shape))
    except ExportError as e:
        print(f"gatescope: error: {e}", file=sys.stderr)
        return 1
    times = ", ".join(f"batch {r['batch_size']} {r['ms']:.3g} ms" for r in latency["rows"])
    print(f"wrote {args.out} ({args.out.stat().st_size / 1e6:.2f} MB): {check.message}\n"
          f"measured in onnxruntime {latency['onnxruntime']} on {latency['threads']} threads (median per call): {times}")
    return 0


def _list(args: argparse.Namespace) -> int:
    from analysis import list_datasets
    from analysis.adversarial.attacks import list_attacks
    from analysis.adversarial.detectors import list_detectors
    from models import list_models

    print("architectures:", ", ".join(list_models()))
    print("datasets:", ", ".join(list_datasets()))
    print("attacks:", ", ".join(list_attacks()))
    print("detectors:", ", ".join(list_detectors()))
    return 0


def _analyze(args: argparse.Namespace) -> int:
    import time

    from analysis.adversarial.attacks import parse_overrides
    from analysis.analyze import AnalyzeConfig, analyze
    from analysis.report import format_detection
    from models import load_run

    overrides = parse_overrides(args.attack_param)
    defaults = AnalyzeConfig()
    config = AnalyzeConfig(
        split=args.split, limit=args.limit, attacks=() if args.attacks == ["none"] else tuple(args.attacks or defaults.attacks), attack_params=overrides,
        detectors=tuple(args.detectors or defaults.detectors), seed=args.seed, adaptive=not args.no_adaptive,
        reference=args.reference, adaptive_limit=args.adaptive_limit, simplified=not args.no_simplified,
        compute_eps=defaults.compute_eps if args.compute_eps is None else tuple(e / 255 for e in args.compute_eps),
        compute_limit=args.compute_limit, umap=not args.no_map,
    )
    t0 = time.perf_counter()
    with _torchrun() as main:
        log = (lambda s: print(f"[{time.perf_counter() - t0:7.0f} s] {s}", flush=True)) if main else (lambda s: None)
        results = analyze(load_run(args.run), config, force=args.force, log=log)  # each step with its time
    if not main:
        return 0  # rank 0 reports and writes
    print(format_detection(results) if results else "no attacks: decision features and the map only")
    print(f"\n(analysis of {args.run} took {time.perf_counter() - t0:.0f} s; results in {args.run / 'analysis'})")
    return 0


def _app(args: argparse.Namespace) -> int:
    from app.roots import ROOTS_ENV, RUNS_ENV
    from models import read_meta

    runs = [p.resolve() for p in args.runs] or ([] if args.root else [DEFAULT_RUN])
    for run in runs:
        read_meta(run)  # fail here, with a clear message, rather than inside the page
    for root in args.root:
        if not root.is_dir():
            raise FileNotFoundError(f"--root {root}: no such folder")
    data = {}
    for item in args.data:
        name, _, folder = item.partition("=")
        if not (name and folder and Path(folder).expanduser().is_dir()):
            raise FileNotFoundError(f"--data {item}: expected NAME=DIR with an existing folder")
        data[name] = str(Path(folder).expanduser().resolve())
    if data:
        from analysis.datasets import DATA_ENV, data_roots

        os.environ[DATA_ENV] = os.pathsep.join(f"{k}={v}" for k, v in {**data_roots(), **data}.items())
    os.environ[RUNS_ENV] = os.pathsep.join(map(str, runs))  # the app script reads these
    os.environ[ROOTS_ENV] = os.pathsep.join(str(r.resolve()) for r in args.root)
    argv = [
        "streamlit", "run", str(APP_SCRIPT),
        "--server.address", args.host, "--server.port", str(args.port), "--server.headless", "true",
        "--server.maxUploadSize", str(args.max_upload_mb), "--browser.gatherUsageStats", "false",
        "--client.toolbarMode", "minimal",
        # no source watching: it polls every imported module's file (torch's thousands) from 4 threads
        # and re-walks them after each script run, CPU a served workbench needs for its pages
        "--server.fileWatcherType", "none",
    ]
    import threading

    threading.Thread(target=_warm, args=(runs[:1],), name="gatescope-warm", daemon=True).start()
    print(f"gatescope: serving http://{args.host}:{args.port}", flush=True)
    return _serve(argv)


# What the first page needs (the Overview's imports), imported while the server starts.
PRELOAD = ("torch", "pandas", "plotly.graph_objects", "analysis", "analysis.image_folder", "analysis.path_health",
           "analysis.speed", "models", "app.figures", "app.health_figures", "app.links", "app.roots")


def _warm(runs: list[Path]) -> None:
    """Import what the first page imports and load the first run once (the OS then holds its files),
    while the server starts and the browser loads the page: Streamlit runs the pages in this process,
    so the first page finds them ready (or waits on the import lock for the rest). A run that does
    not load is left for the page to report."""
    import importlib

    for name in PRELOAD:
        importlib.import_module(name)
    from models import RunError, load_run

    for run in runs:
        try:
            load_run(run)
        except (RunError, OSError):
            pass


def _serve(argv: list[str]) -> int:
    """``streamlit run ...`` in this process (so what :func:`_warm` loaded stays loaded)."""
    from streamlit.web import cli as streamlit_cli

    sys.argv = argv
    return streamlit_cli.main()


if __name__ == "__main__":
    sys.exit(main())
