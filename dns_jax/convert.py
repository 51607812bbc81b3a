"""`python -m dns_jax.convert PTH OUT_DIR`: an official .pth -> an orbax checkpoint directory (the
same as `dns-jax convert`). The conversion itself lives in dns_jax.models.conversion."""
import sys

from dns_jax.cli import run_command


def main(argv=None) -> int:
    return run_command("convert", sys.argv[1:] if argv is None else argv, prog="python -m dns_jax.convert")


if __name__ == "__main__":
    sys.exit(main())
