"""A run's plan: its settings resolved into the model, the problem's setup or the tiling, the
labels, and how an input file becomes the step's input (`Run`, `plan_run`, `read_input`)."""

import dataclasses
import os
from typing import Any, Optional

import numpy as np

from ddrm_jax import bundled
from ddrm_jax import problems
from ddrm_jax import side_files
from ddrm_jax.errors import SettingError
from ddrm_jax.errors import one_line
from ddrm_jax.run_config import RestoreConfig

BUNDLED_PRIOR = bundled.PRIOR

# -- what a run is made of ----------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Model:
  """The checkpoint(s) of a run, their configs and what they need."""
  ckpt: str
  config: Any
  classifier_ckpt: Optional[str] = None
  classifier_config: Any = None

  @property
  def class_conditional(self):
    from ddrm_jax.models import configs  # pylint: disable=g-import-not-at-top
    return configs.is_class_conditional(self.config)

  @property
  def x_shape(self):
    return (self.config.image_size, self.config.image_size, self.config.in_channels)


@dataclasses.dataclass(frozen=True)
class Tiles:
  """resize='tile': tiles of the network's size, and restored size = input size x scale."""
  tile: int
  overlap: int
  tiles_per_call: int
  scale: tuple = (1, 1)
  in_channels: int = 3


@dataclasses.dataclass(frozen=True)
class Run:
  """Everything resolved from the settings before any image is read."""
  config: RestoreConfig  # Resolved.
  model: Model
  problem: problems.Problem
  side: dict  # The problem's side-file arrays.
  setup: Optional[problems.Setup]  # At the network's size; None with tiles.
  tiles: Optional[Tiles]
  files: tuple = ()
  labels: Optional[tuple] = None

  @property
  def x_shape(self):
    return self.model.x_shape

  @property
  def extras(self):
    """The problem's own outputs (`runner.Extras`)."""
    return self.setup.extras if self.setup is not None else self.problem.tile_extras(self.config)

  @property
  def apply_h(self):
    """Measurement mode on photos of the image's size: y = H(photo) (inpainting)."""
    return bool(self.config.measurement and self.problem.apply_h_in_measurement)


def _load_config(path, setting):
  from ddrm_jax import checkpoints  # pylint: disable=g-import-not-at-top
  if os.path.isfile(path):
    raise SettingError(f'§{setting} {path}: is a file, not a ddrm-jax checkpoint directory '
                       '(convert PyTorch checkpoints with python -m weights_convert)')
  try:
    return checkpoints.load_config(path)
  except ValueError as e:
    raise SettingError(f'§{setting}: {one_line(e)}') from None


def resolve_model(c):
  """The `Model` of settings `c` (configs read, not params)."""
  from ddrm_jax.models import configs  # pylint: disable=g-import-not-at-top
  if c.ckpt:
    ckpt = c.ckpt
    if not os.path.exists(ckpt):
      raise SettingError(f'§ckpt {ckpt}: no such checkpoint directory')
  else:
    ckpt = BUNDLED_PRIOR
    if not os.path.isfile(os.path.join(ckpt, 'config.json')):
      raise SettingError('the bundled prior is not built yet (ddrm_jax/assets/prior is missing); '
                         'pass §ckpt with a checkpoint directory')
  config = _load_config(ckpt, 'ckpt')
  if config.family == 'adm_classifier':
    raise SettingError(f'§ckpt {ckpt} is a classifier; pass it as §classifier_ckpt')
  if c.config:
    try:
      named = configs.get_config(c.config)
    except ValueError as e:
      raise SettingError(f'§config: {one_line(e)}') from None
    a, b = named.to_dict(), config.to_dict()
    diff = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
    if diff:
      raise SettingError(f'§config {c.config} disagrees with the config of §ckpt {ckpt} in '
                         + ', '.join(f'{k} ({a.get(k)!r} vs {b.get(k)!r})' for k in diff[:4]))
  cls = None
  if c.classifier_ckpt:
    if not os.path.exists(c.classifier_ckpt):
      raise SettingError(f'§classifier_ckpt {c.classifier_ckpt}: no such checkpoint directory')
    cls = _load_config(c.classifier_ckpt, 'classifier_ckpt')
    if cls.family != 'adm_classifier':
      raise SettingError(f'§classifier_ckpt {c.classifier_ckpt} is not a classifier (family '
                         f'{cls.family!r})')
    if (cls.image_size, cls.in_channels) != (config.image_size, config.in_channels):
      raise SettingError(f'§classifier_ckpt is for {cls.image_size}x{cls.image_size}x'
                         f'{cls.in_channels} images, §ckpt for {config.image_size}x'
                         f'{config.image_size}x{config.in_channels}')
  return Model(ckpt=ckpt, config=config, classifier_ckpt=c.classifier_ckpt,
               classifier_config=cls)


def resolve_labels(c, model, files):
  """Class labels per input file (None when the networks take none)."""
  wants = model.class_conditional or model.classifier_config is not None
  if c.class_label is None and not c.class_labels:
    if wants:
      raise SettingError('this network needs class labels: pass §class_label or §class_labels'
                         if model.class_conditional else
                         'classifier guidance needs class labels: pass §class_label or '
                         '§class_labels')
    return None
  if not wants:
    raise SettingError('class labels need a class-conditional §ckpt or a §classifier_ckpt')
  labels = ([c.class_label] * len(files) if c.class_label is not None
            else side_files.load_class_labels(c.class_labels, files))
  limits = []
  if model.class_conditional:
    limits.append(model.config.num_classes)
  if model.classifier_config is not None:
    limits.append(model.classifier_config.out_channels)
  bad = sorted({lab for lab in labels if not 0 <= lab < min(limits)})
  if bad:
    raise SettingError(f'class labels must be in [0, {min(limits)}), got {bad[:5]}')
  return tuple(labels)


def resolve_tiles(c, problem, side, model):
  """resize='tile': the tiling, and how an input's size gives the restored image's size."""
  from ddrm_jax import tiling  # pylint: disable=g-import-not-at-top
  x_shape = model.x_shape
  tile = x_shape[0]
  overlap = tiling.default_overlap(tile) if c.tile_overlap is None else c.tile_overlap
  if not 0 <= overlap < tile:
    raise SettingError(f"§tile_overlap must be in [0, {tile}) pixels (the network's tiles are "
                       f'{tile}x{tile}), got {overlap}')
  tiles = Tiles(tile=tile, overlap=overlap,
                tiles_per_call=c.tiles_per_call or c.batch_size * c.num_samples,
                in_channels=x_shape[2])
  if c.measurement and not (problem.apply_h_in_measurement or problem.codec):
    op = problem.operator(c, side, x_shape)  # The measurement's size at the network's size.
    (h, w, _), (yh, yw) = x_shape, tuple(op.y_shape)[:2]
    if len(op.y_shape) != 3 or h % yh or w % yw:
      raise SettingError(f'§resize=tile: §deg {c.deg} measurements are not images of a whole '
                         'fraction of the restored size')
    tiles = dataclasses.replace(tiles, scale=(h // yh, w // yw), in_channels=op.y_shape[2])
  return tiles


def plan_run(config, files=(), model=None, labels_from_config=True):
  """The `Run` of (resolved) settings `config` for the input `files` (configs, labels and side
  files read; the operator built at the network's size, or the tiling). Without
  `labels_from_config` the labels are left to the caller (`Restorer`)."""
  c = config
  model = resolve_model(c) if model is None else model
  labels = resolve_labels(c, model, files) if labels_from_config else None
  problem = problems.get(c.deg)
  side = problem.load_side(c)
  if c.resize == 'tile':
    return Run(config=c, model=model, problem=problem, side=side, setup=None,
               tiles=resolve_tiles(c, problem, side, model), files=tuple(files), labels=labels)
  setup = problem.setup(c, side, model.x_shape, model.config)
  return Run(config=c, model=model, problem=problem, side=side, setup=setup, tiles=None,
             files=tuple(files), labels=labels)


# -- inputs -------------------------------------------------------------------------------------


def input_array(run, x, name, x_shape=None):
  """An image (H, W, C) in [-1, 1] model units as the step's input (clean image or
  measurement): channels, fit to the network's size, border padding; tiles: as it is."""
  from ddrm_jax import io  # pylint: disable=g-import-not-at-top
  if run.tiles is not None:
    x = io.to_channels(x, run.tiles.in_channels)
    scale = run.tiles.scale
    if x_shape is not None and x.shape[:2] != (x_shape[0] // scale[0], x_shape[1] // scale[1]):
      raise io.ImageError(f'{name}: changed size during the run')
    return x
  h, w, c = run.setup.in_shape
  x = io.fit(io.to_channels(x, c), (h, w), run.config.resize, name=name)
  if run.setup.padding is not None:  # A real blurred photo: extend its borders.
    x = np.asarray(run.setup.extend(x))
  return x


def read_input(run, path, x_shape=None):
  """One input file as the step's input array (`input_array`)."""
  return input_array(run, run.problem.read(run.config, path), path, x_shape)


def unpadded(run):
  """The run reading its photos as given (no border padding): what sigma_y='auto' measures."""
  if run.setup is None:
    return run
  return dataclasses.replace(run, setup=dataclasses.replace(run.setup, padding=None))


def estimate_sigma_y(run):
  """sigma_y='auto': metrics.noise_sigma of every readable photo ([0, 1] units), as given (no
  border padding); returns (the median, {file: estimate}, [files smaller than
  metrics.NOISE_MIN_SIDE on a side, where the estimate rests on too few pixels])."""
  plain = unpadded(run)
  photos = {}
  for path in run.files:
    try:
      photos[path] = read_input(plain, path)
    except ValueError:
      continue  # Reported by the restore loop.
  return noise_of_photos(photos)


def noise_of_photos(photos):
  """(median noise std, {name: estimate}, [names of photos too small]) of {name: photo}."""
  from ddrm_jax import io  # pylint: disable=g-import-not-at-top
  from ddrm_jax import metrics  # pylint: disable=g-import-not-at-top
  per_image = {k: metrics.noise_sigma(io.to_unit(x)) for k, x in photos.items()}
  small = [k for k, x in photos.items() if min(x.shape[:2]) < metrics.NOISE_MIN_SIDE]
  if not per_image:
    return 0.0, per_image, small
  return float(np.median(list(per_image.values()))), per_image, small


def tile_groups(run, report):
  """resize='tile': [(x_shape, op, file indices)] by restored size, in order of appearance.
  Inputs that cannot be read, are too small or have no operator at their size go to
  `report(index, message)`."""
  t, by_size = run.tiles, {}
  for i, path in enumerate(run.files):
    try:
      h, w = run.problem.read(run.config, path).shape[:2]
    except ValueError as e:
      report(i, one_line(e))
      continue
    x_shape = (h * t.scale[0], w * t.scale[1], run.x_shape[2])
    if min(x_shape[:2]) < t.tile:
      implied = '' if t.scale == (1, 1) else f' (restored {x_shape[0]}x{x_shape[1]})'
      report(i, f"{path}: size {h}x{w}{implied} is smaller than the network's {t.tile}x"
             f'{t.tile} tiles (use §resize=resize or §resize=center_crop)')
      continue
    by_size.setdefault(x_shape, []).append(i)
  groups = []
  for x_shape, members in by_size.items():
    try:
      groups += [(x_shape, op, m) for _, op, m in _by_operator(run, members, x_shape, report)]
    except SettingError as e:
      for i in members:
        report(i, f'{run.files[i]}: {e.template}')
  return groups


def _by_operator(run, members, x_shape, report):
  """[(key, operator, file indices)] of files restored at x_shape, by `Problem.file_operator`
  (one group unless the problem has an operator per file); a file without one is reported."""
  if not run.problem.per_file(run.config):
    return [(tuple(x_shape), run.problem.operator(run.config, run.side, x_shape), members)]
  by_key = {}
  for i in members:
    try:
      key, op = run.problem.file_operator(run.config, run.side, run.files[i], x_shape)
    except SettingError as e:
      report(i, e.template)
      continue
    by_key.setdefault(key, (op, []))[1].append(i)
  return [(key, op, m) for key, (op, m) in by_key.items()]


def file_groups(run, report):
  """The runner's groups of a run whose problem has an operator per file (not tiled)."""
  from ddrm_jax import runner  # pylint: disable=g-import-not-at-top
  groups = _by_operator(run, list(range(len(run.files))), run.x_shape, report)
  return [runner.Group(key=run.x_shape, indices=m, consts=(op,),
                       note=f', {run.config.steps} steps') for _, op, m in groups]
