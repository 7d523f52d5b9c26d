"""Several processes: JAX's multi-controller start-up, shares of the input list, barriers."""

import os
import sys
import threading

import numpy as np

from ddrm_jax.errors import RunError
from ddrm_jax.errors import one_line

PROG = 'ddrm-restore'
DEFAULT_TIMEOUT = 300  # Seconds, as jax.distributed.initialize's own default.
WATCHDOG_MARGIN = 30  # JAX's own timeout comes this much later than ours.


def initialize_distributed(coordinator_address=None, num_processes=None, process_id=None,
                           auto=False, timeout=DEFAULT_TIMEOUT, log=None, err=None):
  """Starts JAX's multi-controller runtime (`jax.distributed.initialize`); a no-op without
  arguments and `auto`. `auto`: JAX finds the coordinator itself (TPU pods, SLURM). Call it
  before any JAX computation.

  It says at once what it waits for (`log`). When the processes have not all connected after
  `timeout` seconds it ends the process with one line (`err`) and status 1: JAX itself would
  abort it with a C++ stack trace, which no Python code can catch.
  """
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
  if not isinstance(timeout, int) or isinstance(timeout, bool) or timeout < 1:
    raise RunError(f'§distributed_timeout must be an int >= 1 (seconds), got {timeout!r}')
  log = log or (lambda m: print(m, file=sys.stderr, flush=True))
  err = err or (lambda m: print(f'error: {m}', file=sys.stderr, flush=True))
  if auto:
    log(f'{PROG}: waiting up to {timeout} s for the processes JAX finds (§distributed)')
    lost = f'the processes of this job did not all connect within {timeout} s'
  else:
    log(f'{PROG}: process {process_id} of {num_processes}: waiting up to {timeout} s for all '
        f'{num_processes} processes at {coordinator_address}')
    lost = (f'process {process_id}: could not reach the coordinator (process 0) at '
            f'{coordinator_address} within {timeout} s' if process_id else
            f'process 0: processes 1..{num_processes - 1} did not all connect to '
            f'{coordinator_address} within {timeout} s')
    lost += ' (start every process with the same §coordinator_address and §num_processes)'
  watchdog = threading.Timer(timeout, _give_up, args=(err, lost))
  watchdog.daemon = True
  watchdog.start()
  try:
    kw = {'initialization_timeout': timeout + WATCHDOG_MARGIN}
    if auto:
      jax.distributed.initialize(**kw)
    else:
      jax.distributed.initialize(coordinator_address=coordinator_address,
                                 num_processes=num_processes, process_id=process_id, **kw)
  except (RuntimeError, ValueError) as e:
    raise RunError(f'jax.distributed.initialize failed: {one_line(e)}') from None
  finally:
    watchdog.cancel()


def _give_up(err, message):
  err(message)
  os._exit(1)  # pylint: disable=protected-access


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
