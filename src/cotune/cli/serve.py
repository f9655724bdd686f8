"""``cotune serve RUN_DIR [--host H] [--port P] [--ui] [--merged] [--api-key-file F]``: an
OpenAI-compatible chat endpoint (and, with ``--ui``, a web chat page) for a tuned model.

The model is loaded once; requests queue for it (``--max-queue``, ``--queue-timeout``) and are
generated in batches (``--max-batch``). Limits on uploads and requests are the fields of
:class:`~cotune.serve.config.ServeConfig`, one flag each; ``--api-key`` / ``--api-key-file`` /
``$COTUNE_API_KEY`` and ``--allowed-hosts`` say who may use it (:mod:`cotune.serve.security`).
Listening beyond this machine without a key logs a warning. Needs the ``serve`` extra:
``pip install 'cotune[serve]'``. Details: docs/serve.md.
"""

from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import fields

from cotune.serve.config import SPECIAL, ServeConfig, flag

log = logging.getLogger(__name__)

LIMIT_HELP = {
    "max_request_mb": "largest request body in MiB (default: %(default)s)",
    "max_media_mb": "largest image or audio item in MiB (default: %(default)s)",
    "max_image_pixels": "largest image, width x height, as sent and as the image processor would resize it (default: %(default)s)",
    "max_image_aspect": "largest ratio of an image's long side to its short side (default: %(default)s)",
    "max_images": "most images per request (default: %(default)s)",
    "max_audio": "most audio clips per request (default: %(default)s)",
    "max_audio_seconds": "longest audio clip in seconds (default: %(default)s)",
    "max_tokens": "answer length when a request sets no max_tokens (default: %(default)s)",
    "max_tokens_limit": "largest max_tokens a request may ask for (default: %(default)s)",
    "queue_timeout": "seconds a request may wait for the model before it gets 503 (default: %(default)s)",
    "max_queue": "requests that may wait for the model; more get 503 at once (default: %(default)s)",
    "max_batch": "most requests generated together in one batch; 1 generates one at a time (default: %(default)s)",
    "prepare_workers": "requests whose media are decoded at the same time (default: %(default)s)",
    "read_timeout": "seconds a client may take to send a request's headers, and again its body (default: %(default)s)",
    "shutdown_timeout": "seconds running generations may go on after SIGTERM/Ctrl-C before they are stopped (default: %(default)s)",
    "max_connections": "open connections at most; more get 503 (default: %(default)s)",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", metavar="RUN_DIR", help="a run directory from cotune train, a saved or a merged model directory")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1, this machine only)")
    parser.add_argument("--port", type=int, default=8000, help="port to listen on (default: 8000)")
    parser.add_argument("--ui", action="store_true", help="also serve the web chat page at /")
    parser.add_argument("--merged", action="store_true", help="fold the adapters into the weights in memory before serving")
    parser.add_argument("--name", help="the model id clients send (default: the run directory's name)")
    parser.add_argument("--device", help="torch device for the model (default: cuda if available, else cpu)")
    parser.add_argument("--media-root", metavar="DIR", help="directory whose files file:// image URLs may name (default: file:// refused)")
    parser.add_argument("--api-key", metavar="KEY",
                        help="require this key (Authorization: Bearer KEY) on every endpoint but /health; visible to other "
                             "users of this machine in the process list: prefer --api-key-file or $COTUNE_API_KEY")
    parser.add_argument("--api-key-file", metavar="FILE", help="require one of the keys in FILE (one per line)")
    parser.add_argument("--allowed-hosts", metavar="H[,H...]",
                        help="Host header values to answer ('*': any; default: loopback names when listening on a loopback "
                             "address, any otherwise)")
    defaults = ServeConfig()
    for f in fields(ServeConfig):
        if f.name in SPECIAL:
            continue
        default = getattr(defaults, f.name)
        parser.add_argument(flag(f.name), dest=f.name, type=type(default), default=default, metavar=_metavar(f.name),
                            help=LIMIT_HELP[f.name])


def _metavar(name: str) -> str:
    return "MB" if name.endswith("_mb") else "S" if name.endswith(("_seconds", "_timeout")) else "N"


def run(args: argparse.Namespace) -> int:
    """Serve a tuned model: OpenAI-compatible chat API, optional web chat UI."""
    from cotune.serve.server import require_serve_extra

    try:
        require_serve_extra()
    except ImportError as err:
        sys.stderr.write(f"cotune: error: {err}\n")
        return 2
    from cotune.config import ConfigError
    from cotune.serve.security import exposure_warning, read_api_keys, resolve_allowed_hosts
    from cotune.serve.server import run_server
    from cotune.serve.service import load_service

    hosts = None if args.allowed_hosts is None else tuple(args.allowed_hosts.split(","))
    config = ServeConfig(**{f.name: getattr(args, f.name) for f in fields(ServeConfig) if f.name not in SPECIAL},
                         media_root=args.media_root, api_keys=read_api_keys(args.api_key, args.api_key_file), allowed_hosts=hosts)
    if not 0 <= args.port < 65536:
        raise ConfigError(f"--port: must be between 0 and 65535, got {args.port}")
    warning = exposure_warning(args.host, config.api_keys, resolve_allowed_hosts(config.allowed_hosts, args.host))
    if warning:
        log.warning("%s", warning)
    service = load_service(args.run_dir, config, merged=args.merged, device=args.device, name=args.name)
    where = f"http://{args.host}:{args.port}"
    log.info("serving %s (%s trainable parameters, %s) at %s/v1%s%s", service.name, f"{service.trainable_params:,}",
             ", ".join(service.modalities), where, f"; chat page at {where}/" if args.ui else "",
             f"; {len(config.api_keys)} API key{'s' * (len(config.api_keys) > 1)} required" if config.api_keys else "")
    run_server(service, args.host, args.port, ui=args.ui, log_level=logging.getLevelName(logging.getLogger("cotune").level).lower())
    return 0
