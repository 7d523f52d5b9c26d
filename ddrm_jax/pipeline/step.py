"""The jitted restore step of a `Run` and the arguments it takes (`restore.make_restore_step`):
the networks loaded once, the tiled network for resize='tile'."""

from ddrm_jax import run_config
from ddrm_jax.errors import SettingError
from ddrm_jax.errors import one_line


def load_networks(run):
  """(net_fn, params, classifier_fn, classifier_params) of the run's checkpoints."""
  from ddrm_jax import checkpoints  # pylint: disable=g-import-not-at-top
  try:
    net_fn, params, _ = checkpoints.load_model(run.model.ckpt)
    cls_fn, cls_params = None, None
    if run.model.classifier_config is not None:
      cls_fn, cls_params, _ = checkpoints.load_model(run.model.classifier_ckpt)
  except ValueError as e:
    raise SettingError(one_line(e)) from None
  return net_fn, params, cls_fn, cls_params


def batch_settings(run, sigma_y):
  """`restore.BatchSettings` of the run; `sigma_y` in [0, 1] image units (doubled here)."""
  from ddrm_jax import restore  # pylint: disable=g-import-not-at-top
  c = run.config
  try:
    return restore.BatchSettings(
        deg=c.deg, steps=c.steps, eta=c.eta, eta_b=c.eta_b, sigma_y=2.0 * sigma_y,
        num_samples=c.num_samples, classifier_scale=c.classifier_scale,
        measurement=c.measurement, apply_h=run.apply_h,
        blind_kernel_size=run.setup.kernel_size if run.problem.blind else 0,
        method=c.method, method_params=tuple(sorted(run_config.method_params(c).items())),
        t_start=run_config.JPEG_T_START if c.jpeg_t_start is None else c.jpeg_t_start)
  except ValueError as e:
    raise SettingError(one_line(e)) from None


def restore_step(run, sigma_y, networks=None):
  """(step, consts): `step(*consts, op, inputs, keys, labels)` restores a batch (the runner's
  step; `networks` from `load_networks`, loaded when None)."""
  from ddrm_jax import restore  # pylint: disable=g-import-not-at-top
  net_fn, params, cls_fn, cls_params = networks or load_networks(run)
  settings = batch_settings(run, sigma_y)
  if run.tiles is not None:
    t = run.tiles
    fn = restore.tiled_network(net_fn, t.tile, overlap=t.overlap, tiles_per_call=t.tiles_per_call,
                               class_conditional=run.model.class_conditional,
                               classifier_net_fn=cls_fn,
                               classifier_scale=run.config.classifier_scale)
    return (restore.make_restore_step(fn, settings, class_conditional=True),
            ((params, cls_params), None))
  step = restore.make_restore_step(net_fn, settings,
                                   class_conditional=run.model.class_conditional,
                                   classifier_net_fn=cls_fn)
  return step, (params, cls_params)
