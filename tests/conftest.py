import atexit
import os
import shutil
import signal
import tempfile

import pytest

# Tests run on CPU with float32 defaults unless a test enables x64 locally.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# One persistent compilation cache for the session, in a temporary directory removed at exit (never
# under ~/.cache): the same kernels compiled again by every build, Searcher and CLI main run
# in-process (new jitted closures each time) and by the CLI subprocesses are loaded from it instead.
# DNS_JAX_COMPILATION_CACHE=off (or a directory) set outside the tests is kept.
if "DNS_JAX_COMPILATION_CACHE" not in os.environ:
    _xla_cache = tempfile.mkdtemp(prefix="dns_jax_test_xla_")
    atexit.register(shutil.rmtree, _xla_cache, True)
    os.environ["DNS_JAX_COMPILATION_CACHE"] = _xla_cache
from dns_jax.compile_cache import enable_compilation_cache  # noqa: E402

enable_compilation_cache(min_compile_secs=0.2)

# the built collection the service tests share (one build per session)
from service_fixtures import service_collection  # noqa: E402,F401


@pytest.fixture(scope="module")
def ray_cluster(tmp_path_factory):
    """A local Ray cluster of 2 CPUs for the module that asks for it (skipped without Ray). Its
    workers import this checkout and these tests, run JAX on CPU and share one compilation cache,
    so that each new actor loads the kernels the first one compiled."""
    ray = pytest.importorskip("ray", reason="Ray is not installed (pip install 'dns-jax[ray]')")
    if ray.is_initialized():
        pytest.skip("Ray is already initialised in this process")
    here = os.path.dirname(os.path.abspath(__file__))
    path = os.pathsep.join([os.path.dirname(here), here] + [p for p in [os.environ.get("PYTHONPATH")] if p])
    cache = str(tmp_path_factory.mktemp("ray_xla_cache"))
    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING",
             runtime_env={"env_vars": {"PYTHONPATH": path, "JAX_PLATFORMS": "cpu", "DNS_JAX_COMPILATION_CACHE": cache}})
    yield ray
    ray.shutdown()


@pytest.fixture(autouse=True)
def _deadline(request):
    """A test marked `deadline(seconds)` fails with TimeoutError instead of hanging (SIGALRM)."""
    marker = request.node.get_closest_marker("deadline")
    if marker is None or not hasattr(signal, "SIGALRM"):
        yield
        return
    seconds = int(marker.args[0])

    def expire(signum, frame):
        raise TimeoutError(f"{request.node.name} ran past its deadline of {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
