"""`Restorer`: the restore step of a run on images in memory (arrays in, arrays out, no files)."""

import numpy as np

from ddrm_jax import run_config
from ddrm_jax.errors import SettingError
from ddrm_jax.pipeline import plan as plan_lib
from ddrm_jax.pipeline import step as step_lib

_IMAGE_KEYS = ('restored', 'samples', 'std', 'degraded', 'baseline', 'original')
_METRIC_KEYS = ('psnr', 'ssim', 'baseline_psnr', 'baseline_ssim', 'sample_psnr', 'sample_ssim')


def to_model_units(images):
  """(N, H, W, C) uint8, or float in [0, 1] -> float32 in [-1, 1] (as `io.read_image` reads)."""
  a = np.asarray(images)
  if a.ndim != 4 or a.shape[-1] not in (1, 3):
    raise SettingError(f'images must be an (N, H, W, C) array with C 1 or 3, got shape {a.shape}')
  if a.dtype == np.uint8:
    return (a.astype(np.float32) / 255.0) * 2.0 - 1.0
  if not np.issubdtype(a.dtype, np.floating):
    raise SettingError(f'images must be uint8 or float in [0, 1], got dtype {a.dtype}')
  if not np.all(np.isfinite(a)) or a.min() < 0.0 or a.max() > 1.0:
    raise SettingError('float images must be finite and in [0, 1] (image units)')
  return a.astype(np.float32) * 2.0 - 1.0


class Restorer:
  """Restores images in memory with the settings of a `RestoreConfig`, image i with the key of
  index i (or `indices[i]`) exactly as `restore_files` restores the i-th input file: the same
  compiled one-image step, so the results equal the files to 8-bit rounding.

    restorer = Restorer.from_checkpoint(RestoreConfig(deg='sr4', num_samples=4))
    out = restorer(images)  # out['restored'] (N, H, W, C) in [0, 1], out['psnr'] (N,), ...

  Paper protocol (default): `images` are clean and are degraded first; with `measurement=True`
  they are the measurements (photos). Returned images are in [0, 1] image units (std too);
  metrics (paper protocol) per image; blind deblurring also returns 'kernel'.
  """

  def __init__(self, config, networks=None, model=None, log=None):
    c = run_config.resolve(config)
    from ddrm_jax.pipeline import files  # pylint: disable=g-import-not-at-top
    self.log = log or files.log_line
    if c.resume or c.overwrite:
      raise SettingError('§resume and §overwrite concern output folders; a Restorer writes none')
    self.model = plan_lib.resolve_model(c) if model is None else model
    self.run = plan_lib.plan_run(c, (), self.model, labels_from_config=False)
    if self.run.problem.per_file(c):
      raise SettingError(f'§deg {c.deg} §measurement reads an operator from each file (a '
                         "JPEG's own tables): use pipeline.restore_files")
    self.networks = networks
    self._steps = {}
    self._ops = {}

  @classmethod
  def from_checkpoint(cls, config):
    """The networks of `config.ckpt` (None: the bundled prior), loaded once."""
    return cls(config)

  @property
  def config(self):
    return self.run.config

  def _step(self, sigma_y):
    if self.networks is None:
      self.networks = step_lib.load_networks(self.run)
    if sigma_y not in self._steps:
      self._steps[sigma_y] = step_lib.restore_step(self.run, sigma_y, self.networks)
    return self._steps[sigma_y]

  def _operator(self, x_shape):
    if self.run.tiles is None:
      return self.run.setup.op
    if x_shape not in self._ops:
      self._ops[x_shape] = self.run.problem.operator(self.config, self.run.side, x_shape)
    return self._ops[x_shape]

  def _inputs(self, images):
    """Each image as the step's input and the image shape it restores to."""
    run, out = self.run, []
    for i, x in enumerate(images):
      x_shape = None
      if run.tiles is not None:
        t = run.tiles
        x_shape = (x.shape[0] * t.scale[0], x.shape[1] * t.scale[1], run.x_shape[2])
        if min(x_shape[:2]) < t.tile:
          raise SettingError(f"image {i}: size {x.shape[0]}x{x.shape[1]} is smaller than the "
                             f"network's {t.tile}x{t.tile} tiles")
      out.append((plan_lib.input_array(run, x, f'image {i}', x_shape), x_shape))
    return out

  def _sigma_y(self, images):
    if self.config.sigma_y != run_config.AUTO:
      return self.config.sigma_y
    from ddrm_jax.pipeline import files  # pylint: disable=g-import-not-at-top
    plain = plan_lib.unpadded(self.run)
    sigma_y, _, small = plan_lib.noise_of_photos(
        {f'image {i}': plan_lib.input_array(plain, x, f'image {i}') for i, x in enumerate(images)})
    files.warn_small_photos(small, self.log)
    return sigma_y

  def __call__(self, images, labels=None, indices=None):
    """Restores `images` ((N, H, W, C) uint8 or float in [0, 1]); returns a dict of numpy arrays
    with a leading axis N: 'restored', 'samples' (N, S, ...), 'std', 'degraded', and in the
    paper protocol 'original', 'baseline' and the metrics (PSNR, SSIM per image)."""
    from ddrm_jax import restore  # pylint: disable=g-import-not-at-top
    xs = to_model_units(images)
    n = xs.shape[0]
    indices = list(range(n)) if indices is None else [int(i) for i in indices]
    if len(indices) != n:
      raise SettingError(f'indices must name one index per image ({n}), got {len(indices)}')
    labels = self._labels(labels, n)
    step, consts = self._step(self._sigma_y(xs))
    rows = []
    for k, (x, x_shape) in enumerate(self._inputs(xs)):
      op = self._operator(x_shape or self.run.x_shape)
      lab = None if labels is None else np.asarray(labels[k:k + 1], np.int32)
      res = step(*consts, op, x[None].astype(np.float32),
                 restore.index_keys(self.config.seed, [indices[k]]), lab)
      res = {key: np.asarray(v) for key, v in res.items()}
      if not self.config.measurement:
        res['original'] = x[None]
      rows.append(self._extras(x_shape).adjust(res))
    return self._stack(rows)

  def _extras(self, x_shape):
    del x_shape
    return self.run.extras

  def _labels(self, labels, n):
    model = self.model
    if labels is None and self.config.class_label is not None:
      labels = [self.config.class_label] * n
    wants = model.class_conditional or model.classifier_config is not None
    if wants and labels is None:
      raise SettingError('this network needs class labels: pass labels (or §class_label)')
    if labels is not None and len(labels) != n:
      raise SettingError(f'labels must name one class per image ({n}), got {len(labels)}')
    return labels if wants else None

  def _stack(self, rows):
    from ddrm_jax import io  # pylint: disable=g-import-not-at-top
    out = {}
    same = len({r['restored'].shape for r in rows}) == 1
    for key in rows[0]:
      if key == 'y':
        continue
      values = [r[key] for r in rows]
      if key in _IMAGE_KEYS:  # As the files are written (io.write_image before 8-bit rounding).
        values = [io.to_unit(v - 1.0 if key == 'std' else v) for v in values]
      out[key] = np.concatenate(values) if same or key in _METRIC_KEYS else [
          v[0] for v in values]
    return out
