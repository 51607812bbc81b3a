import os

# Tests run on CPU with float32 defaults unless a test enables x64 locally.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
