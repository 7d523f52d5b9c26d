"""Several processes: JAX's multi-controller start-up, shares of the input list, barriers."""

import numpy as np

from ddrm_jax.errors import RunError
from ddrm_jax.errors import one_line


def initialize_distributed(coordinator_address=None, num_processes=None, process_id=None,
                           auto=False):
  """Starts JAX's multi-controller runtime (`jax.distributed.initialize`); a no-op without
  arguments and `auto`. `auto`: JAX finds the coordinator itself (TPU pods, SLURM). Call it
  before any JAX computation."""
  given = {'§coordinator_address': coordinator_address, '§num_processes': num_processes,
           '§process_id': process_id}
  named = [k for k, v in given.items() if v is not None]
  if auto and named:
    raise RunError(f'§distributed finds the coordinator itself; leave out {", ".join(named)}')
  if not auto and not named:
    return
  import jax  # pylint: disable=g-import-not-at-top
  if not auto:
    missing = [k for k, v in given.items() if v is None]
    if missing:
      raise RunError(f'{", ".join(named)} also need{"s" if len(named) == 1 else ""} '
                     f'{", ".join(missing)} (or pass §distributed where JAX finds them itself)')
    if num_processes < 1:
      raise RunError(f'§num_processes must be >= 1, got {num_processes}')
    if not 0 <= process_id < num_processes:
      raise RunError(f'§process_id must be in [0, {num_processes}), got {process_id}')
  try:
    if auto:
      jax.distributed.initialize()
    else:
      jax.distributed.initialize(coordinator_address=coordinator_address,
                                 num_processes=num_processes, process_id=process_id)
  except (RuntimeError, ValueError) as e:
    raise RunError(f'jax.distributed.initialize failed: {one_line(e)}') from None


def process_share(n, index, count):
  """The global indices of the images process `index` of `count` restores."""
  return range(index, n, count)


def device_batch(batch_size, num_devices):
  """Rows of a step: `batch_size` rounded up to a multiple of the device count."""
  return -(-batch_size // num_devices) * num_devices


def barrier(name):
  """Waits for every process (a no-op in a single process)."""
  import jax  # pylint: disable=g-import-not-at-top
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    multihost_utils.sync_global_devices(name)


def allgather_rows(row):
  """(P, len(row)) float64 from every process's row of numbers."""
  import jax  # pylint: disable=g-import-not-at-top
  row = np.asarray(row, np.float64)[None]
  if jax.process_count() == 1:
    return row
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  # float32 travels (x64 is usually off): split each number into a coarse and a fine part.
  hi = row.astype(np.float32)
  lo = (row - hi).astype(np.float32)
  got = np.asarray(multihost_utils.process_allgather(np.concatenate([hi, lo], axis=1)))
  got = got.reshape(jax.process_count(), -1).astype(np.float64)
  return got[:, :row.shape[1]] + got[:, row.shape[1]:]
