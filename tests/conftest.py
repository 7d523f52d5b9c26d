"""Suite-wide settings: one persistent XLA compilation cache for every test process.

Many tests compile the same small programs (the tiny network's restore step, the operators) in
separate processes (xdist workers, `ddrm-restore` subprocesses); JAX's persistent cache lets the
later ones load what an earlier one compiled. Entries are keyed by the program and the jax
version, so a cache left from an earlier run cannot change a result. Subprocesses inherit it.
"""

import os
import tempfile

os.environ.setdefault('JAX_COMPILATION_CACHE_DIR', os.path.join(
    tempfile.gettempdir(), f'ddrm-jax-tests-xla-cache-{os.getuid()}'))
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0.5')
