"""Dataset-scale restoration: the loop behind `ddrm-restore` and `pipeline.restore_files`.

One process per host (or per GPU), every local device, files streamed, outputs written as they
are done, runs that can be resumed:

- Shares (`distributed`): of the sorted input list (global indices 0..n-1), process p of P
  restores the images i with i % P == p. Image i uses the key fold_in(key(seed), i)
  (`restore.index_keys`), so every output is the same whatever P, the local device count and the
  batch size.
- Devices (`loop`): a step takes `batch_size` images of the process (rounded up to a multiple of
  the local device count) and dispatches them in rounds of one image per device: a compiled
  program restores D images (D = `jax.local_device_count()`) split over a 1-D mesh
  (`sampler.batch_mesh`, `sampler.shard_batch`), so each device's network batch is one image's
  `num_samples` chains and the files are the same bits whatever `batch_size`. Params are
  replicated; the operator comes with the image's group. Processes never wait for each other
  until the end.
- Groups (`job`): `Job.groups` are images of one size (and operator): one compilation per group
  (tiles run one per image size); records go back to input order at the merge.
- Streaming (`prefetch`): files are read and decoded on background threads, a bounded number of
  images ahead of the device; a step's results are written (PNGs encoded on threads too) while
  the next step computes.
- Written as it goes (`outputs`, `journal`): every output file is written under a temporary name
  and renamed (`io.atomic_write`), then the image's record (its output files and metrics, or its
  error) is appended to the process's journal `progress/process-<p>.jsonl` (flushed and fsynced
  after each batch). A process killed at any moment leaves complete files and journal lines (a
  cut last line is dropped on resume). A problem's own outputs (blind kernels, the crop of
  measurement padding) come in through `Job.extras` (`outputs.Extras`).
- The end (`merge`): after a barrier (`sync_global_devices` when P > 1), process 0 merges the
  journals into metrics.json (the format of a single run), grid.png (the first 16 images of the
  first one's size, read back from their files) and run.json (settings, each process's `Stats`).
  Ctrl-C (or an error) in a single process merges what is done (status interrupted).
- Resume (`job.prepare`): images whose record says they are done and whose files are all there
  are skipped; run.json of other settings is refused; a finished run does nothing.
- The output folder's life (`folder`): a new numbered folder, or an existing one with
  overwrite / resume rules.
"""

from ddrm_jax.errors import RunError
from ddrm_jax.errors import one_line
from ddrm_jax.runner.distributed import barrier
from ddrm_jax.runner.distributed import device_batch
from ddrm_jax.runner.distributed import initialize_distributed
from ddrm_jax.runner.distributed import process_share
from ddrm_jax.runner.job import Group
from ddrm_jax.runner.job import Job
from ddrm_jax.runner.job import Plan
from ddrm_jax.runner.job import Result
from ddrm_jax.runner.job import Stats
from ddrm_jax.runner.job import prepare
from ddrm_jax.runner.journal import PROGRESS_DIR
from ddrm_jax.runner.journal import Journal
from ddrm_jax.runner.journal import inputs_digest
from ddrm_jax.runner.journal import journal_path
from ddrm_jax.runner.journal import read_journals
from ddrm_jax.runner.journal import read_json
from ddrm_jax.runner.journal import write_json
from ddrm_jax.runner.loop import OutOfMemory
from ddrm_jax.runner.loop import PeerLost
from ddrm_jax.runner.loop import is_out_of_memory
from ddrm_jax.runner.loop import run
from ddrm_jax.runner.outputs import GRID_PNG
from ddrm_jax.runner.outputs import METRICS_JSON
from ddrm_jax.runner.outputs import RUN_JSON
from ddrm_jax.runner.outputs import Extras
from ddrm_jax.runner.outputs import merge_metrics
from ddrm_jax.runner.outputs import metric_fields
from ddrm_jax.runner.outputs import output_paths
from ddrm_jax.runner.prefetch import Prefetcher
from ddrm_jax.runner.progress import Progress
from ddrm_jax.runner.progress import rss_bytes
