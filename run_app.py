"""Start IRIS Studio: `python run_app.py [--host H] [--port P] [--data-dir D] [--share --auth U:P] ...`."""

from __future__ import annotations

import argparse
import faulthandler
import logging
import os
import re
import signal
import sys
from pathlib import Path

from app.auth import AuthError, check_exposure, parse_auth, share_server_reachable
from app.config import AppConfig, default_data_dir
from iris_engine.allocator import keep_freed_memory


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="IRIS Studio: few-shot (in-context) medical image segmentation.")
    on_space = bool(os.environ.get("SPACE_ID"))
    parser.add_argument("--host", default="0.0.0.0" if on_space else "127.0.0.1",
                        help="address to listen on (default 127.0.0.1; other addresses need --auth)")
    parser.add_argument("--port", type=int, default=int(os.environ.get("GRADIO_SERVER_PORT", 7860)),
                        help="port (default 7860)")
    data_help = f"folder for the database, files and runs (default $IRIS_DATA_DIR or {default_data_dir()})"
    parser.add_argument("--data-dir", type=Path, default=None, help=data_help)
    parser.add_argument("--db-url", default=None, help="SQLAlchemy database URL (default SQLite in the data folder)")
    parser.add_argument("--weights", type=Path, default=None,
                        help="checkpoint to load (default $IRIS_WEIGHTS, the active trained model, then "
                             "assets/weights/iris2d.pt; missing: an untrained model with a warning)")
    parser.add_argument("--device", default="cpu", help="torch device for inference (cpu, cuda, cuda:1 ...)")
    parser.add_argument("--share", action="store_true", help="create a public Gradio share link (requires --auth)")
    parser.add_argument("--auth", default=None, help="USER:PASSWORD login (or $IRIS_AUTH); required for --share "
                                                     "and for non-localhost --host")
    parser.add_argument("--max-upload-mb", type=float, default=None,
                        help="largest upload in MiB (default $IRIS_MAX_UPLOAD_MB or 1024)")
    parser.add_argument("--max-voxels", type=int, default=None,
                        help="largest image/volume in voxels (default $IRIS_MAX_VOXELS or 67108864)")
    parser.add_argument("--no-demo", action="store_true", help="do not create the demo case on first start")
    return parser


def argument_problem(args: argparse.Namespace) -> str:
    """What is wrong with the arguments that the parser cannot see ('' when nothing), checked before anything slow."""
    if not 0 < args.port < 65536:
        return f"--port must be between 1 and 65535, got {args.port}"
    if not re.fullmatch(r"cpu|mps|cuda(:\d+)?", args.device):
        return f"--device must be cpu, mps, cuda or cuda:N, got {args.device!r}"
    return ""


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    keep_freed_memory()
    if hasattr(signal, "SIGUSR1"):  # `kill -USR1 PID` prints every thread's stack to stderr: where a request hangs
        faulthandler.register(signal.SIGUSR1, all_threads=True)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    on_space = bool(os.environ.get("SPACE_ID"))
    try:
        auth = parse_auth(args.auth)
        if not on_space:
            check_exposure(args.share, args.host, auth)
    except AuthError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if args.share and not share_server_reachable():
        print("error: cannot create a share link: the Gradio share server (api.gradio.app) is unreachable "
              "from this machine (no internet?). Run without --share, or check the network.", file=sys.stderr)
        return 3
    limits = {}
    if args.max_upload_mb is not None:
        limits["upload_limit_bytes"] = int(args.max_upload_mb * 1024**2)
    if args.max_voxels is not None:
        limits["max_voxels"] = args.max_voxels
    if any(v <= 0 for v in limits.values()):
        print("error: --max-upload-mb and --max-voxels must be positive", file=sys.stderr)
        return 2
    try:
        config = AppConfig(host=args.host, port=args.port, device=args.device, db_url=args.db_url,
                           weights=args.weights, **({"data_dir": args.data_dir} if args.data_dir else {}), **limits)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    problem = argument_problem(args)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    from app.startup import AlreadyRunning, install_patient_url_check, lock_data_dir

    try:
        lock = lock_data_dir(config.data_dir)
    except AlreadyRunning as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    from app.services import build_services
    from app.ui import build_ui
    from storage.errors import StorageError

    if on_space:
        logging.getLogger("run_app").info(
            "SPACE_ID is set (Hugging Face Space): listening on %s:%s with %s", config.host, config.port,
            "a login" if auth else "NO login: anyone who can open the Space can use it and see its cases")
    install_patient_url_check()
    try:
        services = build_services(config, with_demo=not args.no_demo)
    except StorageError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    demo = build_ui(services)
    try:
        _, _, share_url = demo.queue(default_concurrency_limit=2).launch(
            server_name=config.host, server_port=config.port, share=args.share, auth=auth,
            max_file_size=config.upload_limit_bytes, show_error=True, prevent_thread_lock=True)
        if args.share and not share_url:
            print("error: the share link could not be created; the app is not shared.", file=sys.stderr)
            return 3
        demo.block_thread()
    finally:
        services.close()
        lock.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
