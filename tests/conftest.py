import os

# Tests run on CPU with float32 defaults unless a test enables x64 locally.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# CLI mains called in-process must not write compiled kernels under ~/.cache
os.environ.setdefault("DNS_JAX_COMPILATION_CACHE", "off")

# the built collection the service tests share (one build per session)
from service_fixtures import service_collection  # noqa: E402,F401
