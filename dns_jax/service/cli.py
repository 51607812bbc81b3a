"""`dns-jax serve`: the retrieval service and its web page over a built work directory.

    dns-jax serve --workdir WORK [--host 127.0.0.1] [--port 8080] [--token TOKEN]
    python -m dns_jax.service --workdir WORK ...            (the same)

Loads the networks and the index once, compiles the kernels (persistent XLA cache, see
dns_jax.compile_cache), then serves the API under /api, its OpenAPI description at /openapi.json
and the page at /. The token may come from $DNS_JAX_SERVICE_TOKEN instead of the command line
(which other users can read in the process list). Binding to an address other than loopback
without a token is refused unless --allow-remote is given. SIGTERM / Ctrl-C: stop accepting, let
the requests in flight finish (up to --graceful-timeout s), let a running addition finish (up to
30 s; else the next start settles it), exit.
"""
from __future__ import annotations

import argparse
import ipaddress
import os
import sys

import uvicorn

from dns_jax.compile_cache import enable_compilation_cache
from dns_jax.service.app import Settings, create_app
from dns_jax.service.auth import TOKEN_ENV
from dns_jax.service.collection import Collection


def build_parser(prog: str = "dns-jax serve") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(p)
    return p


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The flags of `dns-jax serve`."""
    p.add_argument("--workdir", required=True, metavar="WORK", help="folder made by `dns-jax build`")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8080, help="port (default 8080)")
    p.add_argument("--token", default=None,
                   help=f"require 'Authorization: Bearer TOKEN' on every API call (default: ${TOKEN_ENV})")
    p.add_argument("--allow-remote", action="store_true",
                   help="allow binding to a non-loopback address without a token")
    p.add_argument("--max-upload-mb", type=float, default=512, help="largest accepted upload (default 512 MiB)")
    p.add_argument("--graceful-timeout", type=float, default=30,
                   help="seconds the requests in flight get to finish on SIGTERM (default 30)")
    p.add_argument("--no-warm-up", action="store_true", help="do not compile the kernels before serving")
    p.add_argument("--log-level", default="info", choices=("critical", "error", "warning", "info", "debug"))


def is_loopback(host: str) -> bool:
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def serve_main(argv=None, prog: str = "dns-jax serve") -> int:
    return serve(build_parser(prog).parse_args(argv), prog)


def serve(args, prog: str = "dns-jax serve") -> int:
    """Start the service with parsed `add_arguments` flags; returns the exit status."""
    token = args.token if args.token is not None else (os.environ.get(TOKEN_ENV) or None)

    def fail(msg: str) -> int:
        print(f"{prog}: error: {msg}", file=sys.stderr)
        return 2

    if not is_loopback(args.host) and not token and not args.allow_remote:
        return fail(f"refusing to serve on {args.host} without a token: anyone who can reach it could "
                    f"search and add videos; give --token (or ${TOKEN_ENV}), or --allow-remote")
    if args.max_upload_mb <= 0:
        return fail("--max-upload-mb must be positive")
    if not 0 <= args.port < 65536:
        return fail(f"--port {args.port} is not a port number")

    enable_compilation_cache()

    def log(msg):
        print(f"dns-jax serve: {msg}", file=sys.stderr, flush=True)

    try:
        collection = Collection(args.workdir, log=log)
    except (ValueError, FileNotFoundError) as e:
        return fail(str(e))
    log(f"{collection.count()} videos in {collection.workdir}")
    if not args.no_warm_up:
        log(f"kernels compiled in {collection.warm_up():.1f} s")
    app = create_app(collection, Settings(token=token, max_upload_bytes=int(args.max_upload_mb * 2 ** 20)), log=log)
    config = uvicorn.Config(app, host=args.host, port=args.port, log_level=args.log_level,
                            timeout_graceful_shutdown=args.graceful_timeout, server_header=False,
                            proxy_headers=False)
    server = uvicorn.Server(config)
    log(f"serving http://{args.host}:{args.port}/ {'(token required)' if token else '(no token)'}")
    server.run()
    return 0


if __name__ == "__main__":
    sys.exit(serve_main())
