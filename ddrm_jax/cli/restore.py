"""`ddrm-restore`: restore images with DDRM from the command line.

Paper protocol (default): clean images are degraded with --deg and --sigma_y, restored, and
written as original / degraded / baseline / restored PNGs, a grid and metrics.json.
--measurement: the inputs are already degraded photos; they are restored without ground truth.

  ddrm-restore --ckpt CKPT --deg sr4 --sigma_y 0.05 --input photos/ --num_samples 8
  ddrm-restore --ckpt CKPT --deg inp --mask holes.png --measurement --input photo.png
  ddrm-restore --ckpt CKPT --deg sr4 --measurement --resize=tile --input photos/  # Any size.
  ddrm-restore --ckpt CKPT --input list.txt --output run/ --resume  # Continue a killed run.

With no --ckpt the bundled prior (ddrm_jax/assets/prior) is used, with no --input the bundled
sample images (ddrm_jax/assets/samples). Every bad input ends the command with one line on stderr
and a non-zero exit status.

This module is the command-line layer only: flags (one per `pipeline.RestoreConfig` field, with
the field's help text), `pipeline.restore_files`, signals, exit codes and the printed summary.
"""

import os
import signal
import sys
import traceback

from absl import flags

from ddrm_jax import errors
from ddrm_jax import run_config

PROG = 'ddrm-restore'
METHOD_LABELS = {'ddrm': 'DDRM', 'ddnm': 'DDNM', 'pigdm': 'PiGDM', 'dps': 'DPS',
                 'diffpir': 'DiffPIR'}


class Interrupted(KeyboardInterrupt):
  """SIGTERM, handled like Ctrl-C (what is done is written, then the command exits)."""


class SigmaYParser(flags.ArgumentParser):
  """--sigma_y: a number, or 'auto' (estimated from the photos in measurement mode)."""

  def parse(self, argument):
    if isinstance(argument, str) and argument.strip().lower() == run_config.AUTO:
      return run_config.AUTO
    try:
      return float(argument)
    except (TypeError, ValueError):
      raise ValueError(f'expected a number or auto, got {argument!r}') from None

  def flag_type(self):
    return 'float or auto'


def define_flags(fv):
  """Defines the command's flags on FlagValues `fv`: one per RestoreConfig field, then --input,
  --output and --traceback."""
  for f in run_config.fields():
    kind, text = f.metadata['kind'], f.metadata['help']
    if kind == 'float_or_auto':
      flags.DEFINE(SigmaYParser(), f.name, f.default, text, flag_values=fv)
    elif kind == 'enum':
      flags.DEFINE_enum(f.name, f.default, f.metadata['choices'], text, flag_values=fv)
    else:
      define = {bool: flags.DEFINE_bool, int: flags.DEFINE_integer,
                float: flags.DEFINE_float, str: flags.DEFINE_string}[run_config.value_type(f)]
      define(f.name, f.default, text, flag_values=fv)
  flags.DEFINE_string('input', None, 'An image file, a folder of images, a glob, or a .txt list '
                      'of image paths (one a line, relative to the list). Default: the bundled '
                      'samples.', flag_values=fv)
  flags.DEFINE_string('output', None, f'Output folder. Default: a new numbered folder under '
                      f'{run_config.RUNS_DIR}/.', flag_values=fv)
  flags.DEFINE_bool('traceback', False, 'Show the Python traceback of an unexpected error.',
                    flag_values=fv)


def config_from_flags(fv):
  """The RestoreConfig of parsed flags (checks that concern flags alone first)."""
  empty = [f'--{n}' for n in ('input', 'output') if fv[n].present and not fv[n].value.strip()]
  if empty:
    raise errors.SettingError(f'{", ".join(empty)} is empty (leave the flag out for its '
                              'default)')
  return run_config.RestoreConfig(**{f.name: fv[f.name].value for f in run_config.fields()})


def _err(msg):
  print(f'{PROG}: error: {errors.flagged(msg)}', file=sys.stderr, flush=True)


def _info(msg):
  print(errors.flagged(msg), file=sys.stderr, flush=True)


def _interrupted(e, n):
  """Ctrl-C or SIGTERM after some images were done: what is kept; returns the status."""
  res = getattr(e, 'result', None)
  if res is None or res.restored + res.skipped == 0:
    raise e
  done = res.all_done if res.all_done is not None else res.restored + res.skipped
  _err(f'interrupted: {done} of {n} images restored; their files, metrics.json and run.json '
       f'are in {res.out_dir} (--resume continues the run)')
  return 143 if isinstance(e, Interrupted) else 130


def print_summary(res):
  """The summary lines of a finished run; returns the exit status."""
  from ddrm_jax import problems  # pylint: disable=g-import-not-at-top
  c, run = res.config, res.run
  n = res.total
  if res.finished_before:
    print(f'{PROG}: all {n} images of {res.out_dir} are done; nothing to do')
    return 0
  who = ('' if res.process_count == 1 else
         f' (process {res.process_index} of {res.process_count})')
  share = run.restored + len(run.failed) + run.skipped
  if run.restored + run.skipped == 0:
    if share > 1:
      _err(f'none of the {share} inputs could be restored{who}')
    return 1
  what = (f'the posterior mean of {c.num_samples} samples each, with their std'
          if c.num_samples > 1 else 'one posterior sample each')
  model = 'the bundled prior' if not c.ckpt else res.ckpt
  skipped = f', {run.skipped} done before' if run.skipped else ''
  by = '' if c.method == 'ddrm' else f' by {METHOD_LABELS[c.method]}'
  print(f'{PROG}: restored {run.restored} of {share} images{who}{skipped} with {model}: '
        f'{c.deg}{by}, sigma_y {res.sigma_y:g}, {c.steps} steps, {what} ({run.run_s:.1f} s, '
        f'{run.images_per_s:.2f} img/s) -> {run.out_dir}')
  m = run.mean
  if m is not None:
    fmt = lambda v, d: '-' if v is None else f'{v:.{d}f}'
    label = 'posterior mean' if c.num_samples > 1 else METHOD_LABELS[c.method]
    every = '' if run.all_done == n and res.process_count == 1 else f' (all {run.all_done})'
    print(f'  {label}: PSNR {fmt(m["psnr"], 2)} dB  SSIM {fmt(m["ssim"], 4)}   |   '
          f'{problems.get(c.deg).baseline_name}: PSNR {fmt(m["baseline_psnr"], 2)} dB  SSIM '
          f'{fmt(m["baseline_ssim"], 4)}{every}')
    if c.num_samples > 1:
      print(f'  single samples: PSNR {fmt(m["sample_psnr"], 2)} dB  SSIM '
            f'{fmt(m["sample_ssim"], 4)} (sharper, farther from the original)')
  if run.failed:
    _err(f'{len(run.failed)} of {share} inputs failed (see above); the others are in '
         f'{run.out_dir}')
    return 1
  return 0


def run_restore(fv):
  """The command on parsed flags `fv`; returns the exit status."""
  from ddrm_jax import pipeline  # pylint: disable=g-import-not-at-top
  config = config_from_flags(fv)
  try:
    res = pipeline.restore_files(config, fv.input, fv.output, log=_info, err=_err)
  except KeyboardInterrupt as e:  # Ctrl-C or SIGTERM: what is done is merged (runner.run).
    res = getattr(e, 'result', None)
    return _interrupted(e, res.total if res is not None else 0)
  return print_summary(res)


def _raise_interrupted(signum, frame):
  del signum, frame
  raise Interrupted()


def _parse(fv, argv):
  """Parses argv into fv; returns an exit status for --help and bad flags, else None."""
  if any(a in ('-h', '--help', '-help', '--helpfull', '--helpshort') for a in argv[1:]):
    try:
      print(__doc__)
      print(fv.get_help())
    except BrokenPipeError:  # e.g. piped into `head`.
      pass
    return 0
  try:
    rest = fv(argv)
  except flags.Error as e:
    _err(errors.one_line(e))
    return 1
  if len(rest) > 1:
    _err(f'unexpected arguments: {" ".join(rest[1:])} (flags are --name=value)')
    return 1
  return None


def main(argv):
  """Runs the command on the full command line `argv` (program name first); returns the status."""
  fv = flags.FlagValues()
  define_flags(fv)
  status = _parse(fv, list(argv))
  if status is not None:
    return status
  handler = None
  try:
    handler = signal.signal(signal.SIGTERM, _raise_interrupted)
  except ValueError:  # not the main thread: leave signals alone
    pass
  try:
    return run_restore(fv)
  except errors.SettingError as e:
    _err(errors.marked(e))
    from ddrm_jax import runner  # pylint: disable=g-import-not-at-top
    if isinstance(e, runner.PeerLost):  # JAX's shutdown would abort with a C++ trace.
      sys.stdout.flush()
      sys.stderr.flush()
      os._exit(1)  # pylint: disable=protected-access
    return 1
  except KeyboardInterrupt as e:  # before any image was done
    _err('interrupted')
    return 143 if isinstance(e, Interrupted) else 130
  except Exception as e:  # pylint: disable=broad-except
    if fv.traceback:
      traceback.print_exc()
    _err(f'unexpected {type(e).__name__}: {errors.one_line(e)} (rerun with --traceback for '
         'details)')
    return 1
  finally:
    if handler is not None:
      signal.signal(signal.SIGTERM, handler)


def run():
  """Console entry point `ddrm-restore`."""
  sys.exit(main(sys.argv))


if __name__ == '__main__':
  run()
