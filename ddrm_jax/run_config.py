"""`RestoreConfig`: every setting of a restoration run, as the `ddrm-restore` flags name them.

Each field is one flag of the command (same name, same units, same default) and carries its help
text, so a setting is written once: `ddrm_jax.cli.restore` defines its flags from these fields.
`resolve(config)` checks the settings on their own (no file opened) and fills in the defaults
that depend on others (`sigma_y`, `num_samples`, `eta_b`); its dict is what run.json records.
Errors are `errors.SettingError`s that name settings (`§name`).
"""

import dataclasses
import math
import typing
from typing import Optional, Union

from ddrm_jax.errors import SettingError

RUNS_DIR = 'ddrm_runs'
RESIZE_MODES = ('error', 'resize', 'center_crop', 'tile')
# The first run (no ckpt): what the small bundled prior is good at, the posterior mean of
# several samples (with its std) at the paper's noise level.
BUNDLED_SIGMA_Y = 0.05
BUNDLED_NUM_SAMPLES = 8
SEED_LIMIT = 2**32
JPEG_T_START = 300  # DDRM-JPEG's initial timestep (its paper and code).
METHOD_NAMES = ('ddrm', 'ddnm', 'pigdm', 'dps', 'diffpir')  # ddrm_jax.solvers.METHODS
AUTO = 'auto'


def _setting(default, help_text, kind=None, choices=None, group=''):
  """A field: its default, help text and, where its type does not say it, its flag kind."""
  return dataclasses.field(default=default, metadata={
      'help': help_text, 'kind': kind, 'choices': choices, 'group': group})


@dataclasses.dataclass(frozen=True)
class _Settings:
  """The settings of every run (`RestoreConfig` adds each solver's hyperparameters)."""
  # Model.
  ckpt: Optional[str] = _setting(
      None, 'Checkpoint directory (converted or trained). Default: the bundled prior.',
      group='model')
  config: Optional[str] = _setting(
      None, "Optional config name (e.g. celeba_hq); an error if it disagrees with the "
      "checkpoint's own config.", group='model')
  # Problem.
  deg: str = _setting(
      'sr4', 'Degradation: a name of ddrm_jax.problems.NAMES (the operators of '
      'ddrm_jax.operators.NAMES, blur with a kernel file, blind_blur: blind deblurring, the kernel '
      'is estimated with the image).', group='problem')
  kernel: Optional[str] = _setting(
      None, '.npy blur kernel for deg blur: 1-D (both axes) or (2, L) = (vertical, horizontal); '
      'for deg blur2d (circular 2-D blur): a .npy (kh, kw) or (kh, kw, C), used as given, or a '
      'grayscale PNG, normalised to sum 1 (default: a seeded 7x7 camera shake); for deg '
      'blind_blur (paper protocol) the true kernel that blurs the images (default: the '
      'deblur_motion kernel of kernel_size), never shown to the restoration.', group='problem')
  jpeg_quality: Optional[int] = _setting(
      None, 'deg jpeg, paper protocol: the JPEG quality (1..100) whose IJG tables encode the '
      'clean images (default 10); in measurement mode each .jpg file\'s own tables are read.',
      group='problem')
  jpeg_subsampling: str = _setting(
      '4:2:0', 'deg jpeg, paper protocol: chroma subsampling 4:4:4, 4:2:2 or 4:2:0.',
      group='problem')
  jpeg_t_start: Optional[int] = _setting(
      None, 'deg jpeg: the initial timestep of DDRM-JPEG (y noised to it; default 300, the '
      "paper's).", group='problem')
  kernel_normalize: bool = _setting(
      True, 'A kernel file of deg blur, blur2d or blind_blur is divided by its sum (its taps '
      'must be non-negative with a positive sum); with no kernel_normalize it is used as given '
      'and must sum to 1 (within 1e-3).', group='problem')
  kernel_size: Optional[int] = _setting(
      None, "deg blind_blur: size of the estimated kernel (odd, >= 3; default deblur_motion's "
      'size for the image, 5 at 64x64, 17 at 256x256).', group='problem')
  mask: Optional[str] = _setting(
      None, 'Inpainting mask for deg inp: PNG or .npy of (H, W), nonzero = kept.',
      group='problem')
  perm: Optional[str] = _setting(
      None, '.npy permutation of 0..H*W-1 for deg cs2/cs4 (the kept Walsh-Hadamard coefficients '
      'come first).', group='problem')
  sigma_y: Union[float, str, None] = _setting(
      None, 'Measurement noise std in [0, 1] image units, as in the paper (doubled for the '
      '[-1, 1] model); in measurement mode also "auto": estimated from the photos '
      '(metrics.noise_sigma, the median over the inputs). Default: '
      f'{BUNDLED_SIGMA_Y} with the bundled prior, else 0.', kind='float_or_auto',
      group='problem')
  # Sampler.
  method: str = _setting(
      'ddrm', 'Restoration method: ddrm (the paper) or one it is compared with on the same '
      'operators (ddrm_jax.solvers: ddnm, pigdm, dps, diffpir); blind_blur is DDRM\'s.',
      kind='enum', choices=METHOD_NAMES, group='sampler')
  steps: Optional[int] = _setting(
      None, 'Number of steps (network calls). Default: 20 for ddrm, the paper\'s count for the '
      'other methods (ddrm_jax.solvers.<method>.DEFAULT_STEPS).', group='sampler')
  eta: Optional[float] = _setting(
      None, 'DDRM eta (Eq. 8); default 0.85, 1.0 for deg jpeg (DDRM-JPEG\'s) and blind_blur.',
      group='sampler')
  eta_b: Optional[float] = _setting(
      None, 'DDRM eta_b (Eq. 8); default 1.0, 0.7 for deg blind_blur, 0.4 for deg jpeg.',
      group='sampler')
  seed: int = _setting(0, 'Random seed: image i uses fold_in(key(seed), i).', group='sampler')
  batch_size: int = _setting(
      4, 'Images read, dispatched and written together by each process (rounded up to a '
      'multiple of the local device count); each device restores one image at a time, with its '
      'num_samples chains as the network batch, so results do not depend on it.',
      group='sampler')
  num_samples: Optional[int] = _setting(
      None, 'Posterior samples per image; > 1 restores their mean and also writes each sample '
      f'and their std. Default: {BUNDLED_NUM_SAMPLES} with the bundled prior, else 1.',
      group='sampler')
  classifier_ckpt: Optional[str] = _setting(
      None, 'Classifier checkpoint for classifier guidance.', group='sampler')
  classifier_scale: float = _setting(1.0, 'Classifier guidance scale.', group='sampler')
  class_label: Optional[int] = _setting(
      None, 'One class label for every image (class-conditional network or classifier '
      'guidance).', group='sampler')
  class_labels: Optional[str] = _setting(
      None, 'CSV of file name, label (one row per input image).', group='sampler')
  # Files.
  overwrite: bool = _setting(
      False, 'Replace the earlier run in an existing output folder (its outputs are deleted '
      'first; a folder that holds no run is refused).', group='files')
  resize: str = _setting(
      'error', 'Inputs of another size than the model expects: error, resize, center_crop (crop '
      "to the aspect, then resize), or tile (restore at their own size, at least the network's, "
      "by overlapping tiles of the network's size).", kind='enum', choices=RESIZE_MODES,
      group='files')
  tile_overlap: Optional[int] = _setting(
      None, 'resize=tile: pixels shared by neighbouring tiles, in [0, tile). Default: a quarter '
      'of the tile.', group='files')
  tiles_per_call: Optional[int] = _setting(
      None, 'resize=tile: at most this many tiles per network call (the memory bound). '
      'Default: batch_size x num_samples.', group='files')
  measurement: bool = _setting(
      False, 'Inputs are real degraded photos (no ground truth, no metrics).', group='files')
  # Dataset-scale runs (ddrm_jax/runner).
  resume: bool = _setting(
      False, 'Continue the run in the output folder: restore only the images not done yet '
      '(refused if its run.json has other settings; not with overwrite).', group='scale')
  prefetch: int = _setting(
      2, 'Batches read and decoded ahead of the device; 0 reads in the loop.', group='scale')
  read_threads: int = _setting(4, 'Threads that read and decode input files.', group='scale')
  images_per_device: int = _setting(
      1, 'Images each device restores together in one program. 1 (the default): every file is '
      'the same bits whatever batch_size and device count. More: network batches of '
      'images_per_device x num_samples, faster on GPUs/TPUs with num_samples 1; files then agree '
      'across batch_size only to within float rounding.', group='scale')
  coordinator_address: Optional[str] = _setting(
      None, 'Several processes: host:port of process 0, for jax.distributed.initialize (with '
      'num_processes, process_id).', group='scale')
  num_processes: Optional[int] = _setting(None, 'Several processes: how many.', group='scale')
  process_id: Optional[int] = _setting(
      None, 'Several processes: this one, in [0, num_processes).', group='scale')
  distributed_timeout: int = _setting(
      300, 'Several processes: seconds to wait for all of them to connect; then this process '
      'ends with one line saying which did not (JAX would abort with a C++ trace).',
      group='scale')
  distributed: bool = _setting(
      False, 'Call jax.distributed.initialize() with no arguments (TPU pod slices, SLURM: JAX '
      'finds the coordinator itself).', group='scale')



def _solver_fields():
  """(name, type, field) of every solver hyperparameter, named as the papers' symbols."""
  from ddrm_jax import solvers  # pylint: disable=g-import-not-at-top
  out = []
  for method, module in solvers.METHODS.items():
    for name, default, text in module.HYPERPARAMETERS:
      out.append((name, type(default), _setting(default, f'method {method}: {text}.',
                                                group='method')))
  return out


def _replace(self, **changes):
  return dataclasses.replace(self, **changes)


def _to_dict(self):
  return dataclasses.asdict(self)


RestoreConfig = dataclasses.make_dataclass(
    'RestoreConfig',
    [(f.name, f.type, _setting(f.default, f.metadata['help'], f.metadata['kind'],
                               f.metadata['choices'], f.metadata['group']))
     for f in dataclasses.fields(_Settings)] + _solver_fields(),
    frozen=True, namespace={'replace': _replace, 'to_dict': _to_dict,
                            '__doc__': 'Every setting of a run of `pipeline.restore_files` / '
                                       '`Restorer` / `ddrm-restore` (one field per flag).',
                            '__module__': __name__})


def method_params(config):
  """{name: value} of the hyperparameters of `config.method` (empty for ddrm)."""
  from ddrm_jax import solvers  # pylint: disable=g-import-not-at-top
  if config.method == 'ddrm':
    return {}
  return {name: getattr(config, name) for name, _, _ in solvers.get(config.method).HYPERPARAMETERS}


def default_steps(method):
  from ddrm_jax import solvers  # pylint: disable=g-import-not-at-top
  return 20 if method == 'ddrm' else solvers.get(method).DEFAULT_STEPS


def value_type(field):
  """int, float, bool or str: a field's type without Optional."""
  args = [a for a in typing.get_args(field.type) if a is not type(None)]
  return args[0] if args else field.type


def fields():
  """The settings' dataclass fields, in order (each with metadata help, kind, choices)."""
  return dataclasses.fields(RestoreConfig)


def _check_range(name, value, lo, hi, what=None):
  if not lo <= value <= hi:
    raise SettingError(f'§{name} must be in [{lo}, {hi}]{what or ""}, got {value}')


def _check_types(c):
  """Each setting has its field's type (library callers may pass anything)."""
  for f in fields():
    v = getattr(c, f.name)
    if v is None and f.default is None:
      continue
    kind = f.metadata['kind']
    want = (int, float) if value_type(f) is float else value_type(f)
    if kind == 'float_or_auto':
      ok = isinstance(v, str) or (isinstance(v, (int, float)) and not isinstance(v, bool))
    else:
      ok = isinstance(v, want) and (want is bool or not isinstance(v, bool))
    if not ok:
      raise SettingError(f'§{f.name} must be {"a number" if kind else value_type(f).__name__}'
                         f', got {v!r}')


def resolve(config, bundled_prior=None):
  """Checks `config`'s settings on their own (no file opened yet) and returns it with the
  defaults that depend on other settings filled in (`bundled_prior`: whether the run uses the
  bundled prior; default: when `ckpt` is None)."""
  from ddrm_jax import problems  # pylint: disable=g-import-not-at-top
  c = config
  _check_types(c)
  bundled_prior = not c.ckpt if bundled_prior is None else bundled_prior
  empty = [f'§{f.name}' for f in fields()
           if isinstance(getattr(c, f.name), str) and not getattr(c, f.name).strip()]
  if empty:
    raise SettingError(f'{", ".join(empty)} is empty (leave it out for its default)')
  problem = problems.get(c.deg)
  changes = {}
  if c.sigma_y is None:
    changes['sigma_y'] = BUNDLED_SIGMA_Y if bundled_prior and problem.noise else 0.0
  elif isinstance(c.sigma_y, str):
    if c.sigma_y.strip().lower() != AUTO:
      raise SettingError(f'§sigma_y must be a number or {AUTO}, got {c.sigma_y!r}')
    changes['sigma_y'] = AUTO
  if c.num_samples is None:
    changes['num_samples'] = BUNDLED_NUM_SAMPLES if bundled_prior else 1
  if c.eta is None:
    changes['eta'] = problem.default_eta
  if c.eta_b is None:
    changes['eta_b'] = problem.default_eta_b
  if c.method not in METHOD_NAMES:
    raise SettingError(f'unknown §method {c.method!r}; known: {", ".join(METHOD_NAMES)}')
  if c.steps is None:
    changes['steps'] = default_steps(c.method)
  c = c.replace(**changes)
  if c.sigma_y == AUTO:
    if not c.measurement:
      raise SettingError('§sigma_y auto estimates the noise of real photos: it needs '
                         '§measurement')
  elif not 0.0 <= c.sigma_y <= 1.0 or not math.isfinite(c.sigma_y):
    raise SettingError(f'§sigma_y must be in [0, 1] (image units), got {c.sigma_y}')
  _check_range('steps', c.steps, 1, 1000)
  _check_range('eta', c.eta, 0, 1)
  _check_range('eta_b', c.eta_b, 0, 2)
  if not 0 <= c.seed < SEED_LIMIT:
    raise SettingError(f'§seed must be in [0, 2^32), got {c.seed}')
  for name in ('batch_size', 'num_samples', 'images_per_device'):
    if getattr(c, name) < 1:
      raise SettingError(f'§{name} must be >= 1, got {getattr(c, name)}')
  if not math.isfinite(c.classifier_scale):
    raise SettingError('§classifier_scale must be finite')
  if c.class_label is not None and c.class_labels:
    raise SettingError('give §class_label or §class_labels, not both')
  if c.classifier_scale != 1.0 and not c.classifier_ckpt:
    raise SettingError('§classifier_scale needs §classifier_ckpt')
  for name in ('tile_overlap', 'tiles_per_call'):
    if getattr(c, name) is not None and c.resize != 'tile':
      raise SettingError(f'§{name} is for §resize=tile')
  if c.resize not in RESIZE_MODES:
    raise SettingError(f'§resize must be one of {", ".join(RESIZE_MODES)}, got {c.resize!r}')
  if c.tiles_per_call is not None and c.tiles_per_call < 1:
    raise SettingError(f'§tiles_per_call must be >= 1, got {c.tiles_per_call}')
  problem.check(c)
  if c.method != 'ddrm' and (problem.blind or not problem.methods):
    raise SettingError(f'§deg {c.deg} is restored by DDRM only (§method ddrm)')
  if c.resume and c.overwrite:
    raise SettingError('give §resume (continue the run in §output) or §overwrite (replace it), '
                       'not both')
  if c.distributed_timeout < 1:
    raise SettingError(f'§distributed_timeout must be >= 1 (seconds), got '
                       f'{c.distributed_timeout}')
  if c.prefetch < 0 or c.read_threads < 1:
    raise SettingError('§prefetch must be >= 0 and §read_threads >= 1')
  return c
