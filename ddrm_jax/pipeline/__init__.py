"""One entry point for a whole restoration: the command line, the scripts and research code.

  from ddrm_jax import pipeline
  config = pipeline.RestoreConfig(deg='sr4', sigma_y=0.05, num_samples=4)
  result = pipeline.restore_files(config, 'photos/', 'runs/sr4')    # files in, files out
  restorer = pipeline.Restorer.from_checkpoint(config)               # arrays in, arrays out
  out = restorer(images)                                             # (N, H, W, C) uint8/[0, 1]

`restore_files` is the whole run of `ddrm-restore` (the same settings and seed give the same
bytes): reading a file, folder, glob or .txt list; the paper protocol or measurement mode; every
`resize` mode including tiles; border padding of circular blurs; `sigma_y='auto'`; blind
deblurring; class labels and classifier guidance; every local device and several processes;
the journal, `resume` and `overwrite` rules (`runner`). `Restorer` runs the same restore step on
images in memory and writes nothing.

Errors are `errors.SettingError`s naming settings (`§name`; the command line shows `--name`).
"""

from ddrm_jax.errors import SettingError
from ddrm_jax.pipeline.files import Result
from ddrm_jax.pipeline.files import restore_files
from ddrm_jax.pipeline.memory import Restorer
from ddrm_jax.pipeline.plan import Run
from ddrm_jax.pipeline.plan import plan_run
from ddrm_jax.run_config import RestoreConfig
from ddrm_jax.run_config import resolve
