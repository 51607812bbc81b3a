import sys

from dns_jax.service.cli import serve_main

sys.exit(serve_main(prog="python -m dns_jax.service"))
