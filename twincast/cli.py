"""The ``twincast`` command: one thin subcommand per job, over the stage packages.

Configuration is layered here and only here: defaults → ``--config`` TOML → ``TWINCAST_*`` environment →
flags. Every error a user can cause is printed as one line naming the problem, with a non-zero exit.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from twincast import __version__
from twincast.config import build_config, load_toml
from twincast.errors import TwincastError

log = logging.getLogger("twincast")

EXIT_USER_ERROR = 2


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config-file", type=Path,
                        help="TOML file with [synth], [enroll], [train], [serve] tables")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])


def build_parser() -> argparse.ArgumentParser:
    """The argument parser for every subcommand."""
    parser = argparse.ArgumentParser(prog="twincast", description="Live digital twins from a few minutes of footage.")
    parser.add_argument("--version", action="version", version=f"twincast {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    synth = commands.add_parser("synth-footage", help="synthetic talking-head footage from a portrait + speech")
    synth.add_argument("--portrait", type=Path, help="still portrait (default: the committed public-domain one)")
    synth.add_argument("--text", help="what the person says (default: a short product pitch)")
    synth.add_argument("--out", type=Path, required=True, help="output .mp4 (a .json truth sidecar goes beside it)")
    synth.add_argument("--size", type=int, dest="size_px", help="output width and height in pixels")
    synth.add_argument("--seed", type=int)
    _add_common(synth)

    enroll = commands.add_parser("enroll", help="footage → avatar pack")
    enroll.add_argument("video", type=Path)
    enroll.add_argument("--out", type=Path, required=True, help="avatar pack directory to create")
    enroll.add_argument("--crop-px", type=int, help="aligned face crop size (multiple of 16)")
    enroll.add_argument("--force", action="store_true", help="replace an existing pack")
    _add_common(enroll)

    train = commands.add_parser("train", help="avatar pack → trained renderer (a run directory)")
    train.add_argument("pack", type=Path)
    train.add_argument("--out", type=Path, required=True, help="run directory")
    train.add_argument("--config", "--preset", dest="preset", default="tiny",
                       help="model size: tiny (tests), demo (CPU live), base (GPU)")
    train.add_argument("--steps", type=int)
    train.add_argument("--batch-size", type=int)
    train.add_argument("--learning-rate", type=float)
    train.add_argument("--seed", type=int)
    train.add_argument("--force", action="store_true", help="overwrite an existing run")
    _add_common(train)

    export = commands.add_parser("export", help="run → twin.onnx + twin.json sidecar")
    export.add_argument("run", type=Path)
    export.add_argument("--out", type=Path, required=True, help="output .onnx path")
    export.add_argument("--steps", type=int, help="sampler steps unrolled into the graph")
    export.add_argument("--opset", type=int, default=17)
    _add_common(export)

    bench = commands.add_parser("bench", help="frames/s and latency of the engines on an artifact")
    bench.add_argument("--model", type=Path, required=True, help="twin.onnx or a directory holding it")
    bench.add_argument("--engine", default="onnxruntime", help="an engine name, 'auto', or 'all'")
    bench.add_argument("--batch", default="1", help="comma-separated batch sizes, e.g. 1,4,8")
    bench.add_argument("--seconds", type=float, default=3.0, help="timed seconds per row")
    bench.add_argument("--threads", type=int, default=0, help="engine CPU threads (0 = all cores)")
    bench.add_argument("--json", action="store_true", help="print a JSON list of rows")
    _add_common(bench)

    for name, help_text in (("serve", "serve a twin live over WebRTC"), ("demo", "serve the embedded default twin")):
        serve = commands.add_parser(name, help=help_text)
        if name == "serve":
            serve.add_argument("--avatar", type=Path, required=True, help="avatar pack directory")
            serve.add_argument("--model", type=Path, required=True, help="twin.onnx (with twin.json beside it)")
        else:
            serve.add_argument("--pack-only", action="store_true", help="build the demo pack, print its path, exit")
        serve.add_argument("--host")
        serve.add_argument("--port", type=int)
        serve.add_argument("--engine")
        serve.add_argument("--threads", type=int)
        serve.add_argument("--pose", help="pose driver: loop (footage loop) or still")
        serve.add_argument("--video-codec", help="vp8 (default) or h264")
        serve.add_argument("--lead-frames", type=int, help="render lead ahead of playout, in frames")
        _add_common(serve)
    return parser


def _progress(args: argparse.Namespace) -> bool:
    return not args.quiet


def cmd_synth(args: argparse.Namespace, toml: dict[str, Any]) -> int:
    from avatar.synth import DEFAULT_PORTRAIT, DEFAULT_TEXT, SynthConfig, synth_footage

    config = build_config(SynthConfig, section="synth", toml=toml, env=os.environ,
                          overrides={"size_px": args.size_px, "seed": args.seed})
    text = DEFAULT_TEXT if args.text is None else args.text
    result = synth_footage(args.portrait or DEFAULT_PORTRAIT, text, args.out, config, progress=_progress(args))
    print(json.dumps({"video": str(result.video), "sidecar": str(result.sidecar), "frames": result.frame_count,
                      "duration_s": result.duration_s}))
    return 0


def cmd_enroll(args: argparse.Namespace, toml: dict[str, Any]) -> int:
    from avatar.enroll import EnrollConfig, enroll

    config = build_config(EnrollConfig, section="enroll", toml=toml, env=os.environ,
                          overrides={"crop_px": args.crop_px})
    result = enroll(args.video, args.out, config, force=args.force, progress=_progress(args))
    print(json.dumps({"pack": str(result.pack), "frames": result.frame_count, "usable_frames": result.usable_frames,
                      "holdout": list(result.holdout), "base_range": list(result.base_range)}))
    return 0


def cmd_train(args: argparse.Namespace, toml: dict[str, Any]) -> int:
    from avatar.pack import AvatarPack
    from model.config import TrainConfig, preset
    from model.train import train

    pack = AvatarPack.load(args.pack)
    chosen = preset(args.preset, crop_px=pack.meta.crop_px, mask_top=pack.meta.mask_top)
    train_config = build_config(TrainConfig, section="train", toml=toml, env=os.environ, base=chosen.train,
                                overrides={"steps": args.steps, "batch_size": args.batch_size,
                                           "learning_rate": args.learning_rate, "seed": args.seed})
    result = train(args.pack, args.out, chosen.model, train_config, force=args.force, progress=_progress(args))
    print(json.dumps({"run": str(result.run), "steps": result.steps, "final_loss": round(result.final_loss, 5),
                      "seconds": round(result.seconds, 1)}))
    return 0


def cmd_export(args: argparse.Namespace, toml: dict[str, Any]) -> int:
    from export.onnx_export import export_run

    result = export_run(args.run, args.out, steps=args.steps, opset=args.opset)
    print(json.dumps({"onnx": str(result.onnx), "sidecar": str(result.sidecar), "weights": str(result.weights),
                      "max_abs_error": result.max_abs_error}))
    return 0


def cmd_bench(args: argparse.Namespace, toml: dict[str, Any]) -> int:
    from engines.base import EngineOptions, engine_names
    from engines.bench import run_bench
    from export.onnx_export import artifact_for
    from twincast.demo import cache_dir
    from twincast.errors import InputError

    try:
        batches = [int(part) for part in args.batch.split(",") if part.strip()]
    except ValueError as exc:
        raise InputError(f"--batch {args.batch!r} must be comma-separated integers like 1,4,8") from exc
    if not batches or min(batches) < 1:
        raise InputError(f"--batch {args.batch!r} must list batch sizes ≥ 1")
    engines = engine_names() if args.engine == "all" else [args.engine]
    model = artifact_for(args.model, cache_dir())
    rows = run_bench(model, engines, batches, seconds=args.seconds, options=EngineOptions(threads=args.threads))
    if args.json:
        print(json.dumps([row.to_dict() for row in rows], indent=1))
    else:
        print(f"{'engine':<12} {'steps':>5} {'batch':>5} {'fps':>9} {'p50 ms':>8} {'p99 ms':>8} {'vs eager':>8}")
        for row in rows:
            ratio = f"{row.vs_torch_eager:.2f}×" if row.vs_torch_eager else "-"
            print(f"{row.engine:<12} {row.steps:>5} {row.batch:>5} {row.fps:>9.1f} {row.p50_ms:>8.2f} "
                  f"{row.p99_ms:>8.2f} {ratio:>8}")
    return 0


def _serve_config(args: argparse.Namespace, toml: dict[str, Any]) -> Any:
    from stream.config import ServeConfig

    return build_config(ServeConfig, section="serve", toml=toml, env=os.environ, overrides={
        "host": args.host, "port": args.port, "engine": args.engine, "threads": args.threads, "pose": args.pose,
        "video_codec": args.video_codec, "lead_frames": args.lead_frames,
        "operator_token": os.environ.get("TWINCAST_OPERATOR_TOKEN") or None,
    })


def _announce(line: str) -> None:
    print(line, flush=True)


def cmd_serve(args: argparse.Namespace, toml: dict[str, Any]) -> int:
    from stream.server import serve

    asyncio.run(serve(_serve_config(args, toml), args.avatar, args.model, announce=_announce))
    return 0


def cmd_demo(args: argparse.Namespace, toml: dict[str, Any]) -> int:
    from stream.server import serve
    from twincast.demo import cache_dir, demo_model, demo_pack

    config = _serve_config(args, toml)
    pack = demo_pack(cache_dir(), progress=_progress(args))
    if args.pack_only:
        print(pack)
        return 0
    model = demo_model(cache_dir())
    asyncio.run(serve(config, pack, model, announce=_announce))
    return 0


COMMANDS: dict[str, Callable[[argparse.Namespace, dict[str, Any]], int]] = {
    "synth-footage": cmd_synth,
    "enroll": cmd_enroll,
    "train": cmd_train,
    "export": cmd_export,
    "bench": cmd_bench,
    "serve": cmd_serve,
    "demo": cmd_demo,
}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``twincast`` console script."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=getattr(logging, args.log_level),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("aioice").setLevel(logging.WARNING)
    os.environ.setdefault("GLOG_minloglevel", "2")
    try:
        return COMMANDS[args.command](args, load_toml(args.config_file))
    except TwincastError as exc:
        print(f"twincast {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
