"""`dancecam models list | download | verify | forget | convert | export | path`: the model manager's command line."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn
from rich.table import Table

from engines import download as dl
from engines import registry, store
from engines.command import dancecam, styled
from engines.errors import DanceCamError, ModelMissingError
from engines.registry import ModelEntry


def add_parser(commands: argparse._SubParsersAction) -> None:
    models = commands.add_parser(
        "models",
        help="list, download, verify and locate model files",
        description="Manage the model files DanceCam uses. Files go to --model-dir, else $DANCECAM_HOME, "
        "else ~/.cache/dancecam. Gated Hugging Face files need HF_TOKEN.",
    )
    models.add_argument(
        "--model-dir", default=None, help="model directory (default: $DANCECAM_HOME or ~/.cache/dancecam)"
    )
    sub = models.add_subparsers(dest="models_command", metavar="ACTION")
    sub.required = True

    def leaf(name: str, help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text)
        # accepted after the action too; SUPPRESS keeps a value given before it
        p.add_argument("--model-dir", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
        return p

    p = leaf("list", "show every model file: source, size, licence, access, hash and whether it is here")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(handler=cmd_list)

    p = leaf("download", "download model files (all downloadable ones when no NAME is given)")
    p.add_argument("names", nargs="*", metavar="NAME", help="registry name or file name")
    p.add_argument("--force", action="store_true", help="download again even when a verified copy is present")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--retries", type=_non_negative_int, default=4, help="retries per source after a cut (default 4)")
    p.add_argument("--timeout", type=_positive_float, default=30.0, help="seconds per connect/read (default 30)")
    p.set_defaults(handler=cmd_download)

    p = leaf("verify", "check files on disk against their sha256 (records it on first use where none is published)")
    p.add_argument("names", nargs="*", metavar="NAME")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(handler=cmd_verify)

    p = leaf(
        "forget",
        "reset the sha256 recorded on first use for NAME (a new release, or a good copy placed by hand after a bad "
        "one): the next download, verify or convert records it anew",
    )
    p.add_argument("names", nargs="+", metavar="NAME")
    p.set_defaults(handler=cmd_forget)

    p = leaf(
        "convert", "convert official Keras weights to cached safetensors (all present convertible files by default)"
    )
    p.add_argument("names", nargs="*", metavar="NAME")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(handler=cmd_convert)

    p = leaf(
        "export",
        "write converted networks as ONNX files (FaceDancer: generator and mapping; ArcFace), each checked against "
        "PyTorch with ONNX Runtime (all converted ones by default)",
    )
    p.add_argument("names", nargs="*", metavar="NAME")
    p.add_argument("-o", "--out", type=Path, default=Path("."), help="folder for the .onnx files (default: here)")
    p.add_argument("--opset", type=_opset, default=17, help="ONNX opset (default 17)")
    p.set_defaults(handler=cmd_export)

    p = leaf("path", "print the model directory, or where each NAME's file goes (to place files fetched elsewhere)")
    p.add_argument("names", nargs="*", metavar="NAME")
    p.set_defaults(handler=cmd_path)


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError("must be >= 0")
    return value


def _opset(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if not 13 <= value <= 20:  # InstanceNormalization and dynamic axes need 13; the TorchScript exporter stops at 20
        raise argparse.ArgumentTypeError(f"opset must be an integer from 13 to 20, got {text!r}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError("must be > 0")
    return value


def _out() -> Console:
    console = Console(highlight=False)
    if not console.is_terminal:  # piped: do not squeeze tables into 80 columns
        console = Console(highlight=False, width=200)
    return console


def _entries(names: list[str]) -> list[ModelEntry]:
    return [registry.find(n) for n in names] if names else list(registry.MODELS)


def _hash_text(entry: ModelEntry, trust: store.TrustStore) -> str:
    if entry.sha256:
        return f"{entry.sha256[:16]}… published"
    rec = trust.get(entry.file_name)
    if rec:
        return f"{rec.sha256[:16]}… trust on first use, recorded {rec.recorded_at[:10]}"
    return "trust on first use: not recorded yet"


def cmd_list(args: argparse.Namespace) -> int:
    model_dir = store.resolve_model_dir(args.model_dir)
    trust = store.TrustStore(model_dir)
    rows = [(e, store.check(e, model_dir, hash_file=False)) for e in registry.MODELS]
    if args.json:
        print(
            json.dumps({"model_dir": str(model_dir), "models": [_entry_json(e, s, trust) for e, s in rows]}, indent=2)
        )
        return 0
    table = Table(title="DanceCam model files", title_justify="left")
    for col in ("Name", "File", "Size", "Access", "Licence", "Used by", "SHA-256", "Here"):
        table.add_column(col, overflow="fold")
    for e, s in rows:
        here = {"present": "[green]yes[/]", "missing": "[dim]no[/]", "wrong-size": "[red]wrong size[/]"}.get(
            s.state, s.state
        )
        access = {"gated": "[yellow]gated (HF_TOKEN)[/]", "bundled": "in facenet-pytorch"}.get(e.access, "open")
        table.add_row(
            e.name,
            e.file_name,
            store.human_size(e.size, e.size_exact),
            access,
            escape(e.licence),
            escape(e.used_by),
            _hash_text(e, trust),
            here,
        )
    out = _out()
    out.print(table)
    out.print(f"Model directory: {model_dir}  (set with --model-dir or DANCECAM_HOME)")
    return 0


def _entry_json(e: ModelEntry, s: store.FileStatus, trust: store.TrustStore) -> dict[str, Any]:
    rec = trust.get(e.file_name)
    return {
        "name": e.name,
        "file_name": e.file_name,
        "description": e.description,
        "used_by": e.used_by,
        "licence": e.licence,
        "size": e.size,
        "size_exact": e.size_exact,
        "access": e.access,
        "access_url": e.access_url,
        "urls": [src.url for src in e.sources],
        "sha256": e.sha256 or (rec.sha256 if rec else None),
        "sha256_origin": "published" if e.sha256 else ("trust-on-first-use" if rec else "not-recorded"),
        "path": str(s.path) if s.path else None,
        "state": s.state,
    }


def cmd_download(args: argparse.Namespace) -> int:
    model_dir = store.resolve_model_dir(args.model_dir)
    entries = _entries(args.names)
    opts = dl.DownloadOptions(
        retries=args.retries, timeout=args.timeout, progress=not args.no_progress, force=args.force
    )
    out, err = _out(), Console(stderr=True, highlight=False)
    failures: list[DanceCamError] = []
    for entry in entries:
        try:
            result = dl.download(entry, model_dir, opts, console=err)
        except DanceCamError as e:
            failures.append(e)
            err.print(f"[red]✗ {entry.name}:[/] {styled(str(e))}", soft_wrap=True)
            continue
        if result.url is None:
            what = "found in facenet-pytorch" if entry.bundled else "already present"
            out.print(f"[green]✓[/] {entry.name}: {what}, sha256 ok ({result.trust}) at {result.path}")
        else:
            note = "sha256 recorded (trust on first use)" if result.trust == "recorded" else "sha256 ok"
            out.print(f"[green]✓[/] {entry.name}: downloaded {store.human_size(result.size)}, {note} → {result.path}")
    if failures:
        err.print(f"[bold red]{len(failures)} of {len(entries)} model files failed[/]; see above")
        return max(f.exit_code for f in failures)
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    model_dir = store.resolve_model_dir(args.model_dir)
    results = [store.check(e, model_dir) for e in _entries(args.names)]
    if args.json:
        print(
            json.dumps(
                {
                    "model_dir": str(model_dir),
                    "ok": all(r.usable for r in results),
                    "files": [
                        {
                            "name": r.entry.name,
                            "path": str(r.path) if r.path else None,
                            "state": r.state,
                            "expected_sha256": r.expected,
                            "actual_sha256": r.actual,
                            "message": r.describe(),
                        }
                        for r in results
                    ],
                },
                indent=2,
            )
        )
    else:
        out = _out()
        for r in results:
            mark = "[green]✓[/]" if r.usable else "[red]✗[/]"
            out.print(f"{mark} {r.entry.name} ({r.entry.file_name}): {escape(r.describe())}", soft_wrap=True)
        bad = sum(not r.usable for r in results)
        if bad:
            out.print(f"{bad} of {len(results)} not usable. Model directory: {model_dir}")
    return 0 if all(r.usable for r in results) else 1


def cmd_forget(args: argparse.Namespace) -> int:
    model_dir = store.resolve_model_dir(args.model_dir)
    trust = store.TrustStore(model_dir)
    out = _out()
    for entry in _entries(args.names):
        if entry.sha256:
            out.print(f"{entry.name}: its sha256 is published and pinned in DanceCam's registry; nothing to reset")
        elif trust.forget(entry.file_name):
            out.print(
                f"[green]✓[/] {entry.name}: recorded sha256 reset; the next download, verify or convert of "
                f"{entry.file_name} records it anew",
                soft_wrap=True,
            )
        else:
            out.print(f"{entry.name}: no sha256 was recorded for {entry.file_name}")
    return 0


def cmd_convert(args: argparse.Namespace) -> int:
    from engines.convert import converter
    from engines.convert.cache import convert_cached

    model_dir = store.resolve_model_dir(args.model_dir)
    if args.names:
        entries = _networks(args.names, "needs no conversion; convertible")
    else:
        entries = [
            e for e in registry.MODELS if e.converter and store.check(e, model_dir, hash_file=False).state != "missing"
        ]
        if not entries:
            raise ModelMissingError(
                f"no convertible model file is in {model_dir}; download one first, e.g. "
                f"`{dancecam('models', 'download', 'facedancer_c_hq')}` ({_convertible_names()})"
            )
    out = _out()
    for entry in entries:
        # a hand-placed file without a published hash is trusted only once it has converted (or `verify` said so)
        status = store.check(entry, model_dir, record=False)
        unrecorded = status.state == "present"
        if not (status.usable or unrecorded):
            raise ModelMissingError(f"{entry.name}: {status.describe()}")
        assert status.path is not None
        assert status.actual is not None
        assert entry.converter is not None
        convert = converter(entry.converter)
        with Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=Console(stderr=True),
            disable=args.no_progress,
        ) as progress:
            task = progress.add_task(f"converting {entry.file_name}", total=None)

            def report(done: int, total: int, task: TaskID = task, progress: Progress = progress) -> None:
                progress.update(task, completed=done, total=total)

            _config, state, path, fresh = convert_cached(
                status.path, entry.converter, lambda p, c=convert: c(p, report), source_sha256=status.actual
            )
        note = ""
        if unrecorded:
            store.TrustStore(model_dir).record(
                entry.file_name, status.actual, status.size or 0, source=f"converted on disk: {status.path}"
            )
            note = "; sha256 recorded (trust on first use)"
        params = sum(v.numel() for k, v in state.items() if not k.endswith(("running_mean", "running_var")))
        what = "converted" if fresh else "already converted"
        out.print(f"[green]✓[/] {entry.name}: {what}, {len(state)} tensors, {params:,} parameters{note} → {path}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from engines.arcface import load_arcface
    from engines.facedancer import load_facedancer
    from engines.runners.onnx_export import export_for_users
    from realtime.assembly.weights import find_weights

    model_dir = store.resolve_model_dir(args.model_dir)
    if args.names:
        entries = _networks(args.names, "is not a network DanceCam exports; exportable")
    else:
        entries = [e for e in registry.MODELS if e.converter and _converted(e, model_dir)]
        if not entries:
            raise ModelMissingError(
                f"no converted network is in {model_dir}: download and convert one first, e.g. "
                f"`{dancecam('models', 'download', 'facedancer_c_hq')}` then `{dancecam('models', 'convert')}` "
                f"({_convertible_names()})"
            )
    # every file checked before the first (slow) export: a missing one fails now, naming the commands
    weights = find_weights(entries, model_dir, args.model_dir is not None)
    if args.out.exists() and not args.out.is_dir():
        raise DanceCamError(f"--out {args.out} is a file, not a folder")
    out = _out()
    loaders = {"facedancer": load_facedancer, "arcface": load_arcface}
    for entry, (path, _key) in zip(entries, weights, strict=True):
        assert entry.converter is not None
        model = loaders[entry.converter](path)
        with Console(stderr=True).status(f"exporting {entry.name} (opset {args.opset})"):
            graphs = export_for_users(model, args.out, entry.name, args.opset)
        for g in graphs:
            signature = f"{', '.join(g.io.input_names)} → {', '.join(g.io.output_names)}"
            error = max(g.max_abs_error.values())
            out.print(
                f"[green]✓[/] {escape(str(g.path))}: {g.io.network} ({signature}, batch 1..{g.io.max_batch}); "
                f"ONNX Runtime vs PyTorch max abs error {error:.1e}"
            )
    return 0


def _converted(entry: ModelEntry, model_dir: Path) -> bool:
    from realtime.assembly.weights import find_weights

    try:
        find_weights([entry], model_dir)
    except ModelMissingError:
        return False
    return True


def _networks(names: list[str], refusal: str) -> list[ModelEntry]:
    """The entries named, each a convertible network; DanceCamError "<name> <refusal>: <the ones that are>"."""
    entries = _entries(names)
    for e in entries:
        if e.converter is None:
            raise DanceCamError(f"{e.name} {refusal}: {_convertible_names()}")
    return entries


def _convertible_names() -> str:
    return ", ".join(e.name for e in registry.MODELS if e.converter)


def cmd_path(args: argparse.Namespace) -> int:
    model_dir = store.resolve_model_dir(args.model_dir)
    if not args.names:
        print(model_dir)
        return 0
    for entry in _entries(args.names):
        path = store.file_path(entry, model_dir)
        if path is None:
            assert entry.bundled is not None
            raise DanceCamError(
                f"{entry.file_name} ships inside {entry.bundled.package}, which is not installed: "
                f"{entry.bundled.install_hint}"
            )
        print(Path(path))
    return 0
