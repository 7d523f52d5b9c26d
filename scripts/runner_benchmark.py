"""Images/s of `ddrm-restore` over a folder: 1 or more local processes, the prefetcher on or off.

  python scripts/runner_benchmark.py --images 96 --processes 1,2 --prefetch 2,0

A tiny random-weight DDPM and `--images` random PNGs of `--input_size` (decoded and resized to
the network's size by the reader threads, so that reading costs something) are made in a
temporary folder; every configuration runs the command in fresh processes (jax.distributed on
127.0.0.1 for several), and its run.json gives the images/s of each process without the
compilation. Prints a markdown table.
"""

import json
import os
import socket
import subprocess
import sys
import tempfile
import time

from absl import app
from absl import flags
from absl import logging
import numpy as np
from PIL import Image

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from ddrm_jax import benchmarks  # pylint: disable=g-import-not-at-top,wrong-import-position
from ddrm_jax import checkpoints  # pylint: disable=g-import-not-at-top,wrong-import-position
from ddrm_jax.models import ddpm_unet  # pylint: disable=g-import-not-at-top,wrong-import-position

_IMAGES = flags.DEFINE_integer('images', 96, 'Input images.')
_INPUT_SIZE = flags.DEFINE_integer('input_size', 256, 'Side of the input PNGs (resized).')
_SIZE = flags.DEFINE_integer('size', 32, 'Side of the network.')
_STEPS = flags.DEFINE_integer('steps', 4, 'DDRM steps.')
_BATCH = flags.DEFINE_integer('batch_size', 8, 'Images per process per step.')
_PROCESSES = flags.DEFINE_list('processes', ['1', '2'], 'Local process counts to run.')
_PREFETCH = flags.DEFINE_list('prefetch', ['2', '0'], '--prefetch values to run.')


def _free_port():
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def _run(base, out, processes, prefetch):
  argv = [sys.executable, os.path.join(REPO, 'scripts', 'restore.py')] + base + [
      '--output', out, f'--prefetch={prefetch}']
  if processes > 1:
    argv.append(f'--coordinator_address=127.0.0.1:{_free_port()}')
    argv.append(f'--num_processes={processes}')
  t0 = time.time()
  procs = [subprocess.Popen(argv + ([f'--process_id={p}'] if processes > 1 else []),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
           for p in range(processes)]
  for p in procs:
    log = p.communicate()[0]
    if p.returncode:
      raise SystemExit(f'run failed: {log[-2000:]}')
  wall = time.time() - t0
  with open(os.path.join(out, 'run.json')) as fh:
    return json.load(fh)['per_process'], wall


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)  # orbax's INFO lines.
  tmp = tempfile.mkdtemp(prefix='runner_benchmark_')
  config = ddpm_unet.DDPMConfig(image_size=_SIZE.value, ch=32, ch_mult=(1, 2),
                                num_res_blocks=1, attn_resolutions=(_SIZE.value // 2,),
                                num_groups=8)
  ckpt = os.path.join(tmp, 'ckpt')
  checkpoints.save_checkpoint(ckpt, benchmarks.random_params(config), config)
  imgs = os.path.join(tmp, 'imgs')
  os.makedirs(imgs)
  rng = np.random.default_rng(0)
  n = _INPUT_SIZE.value
  for i in range(_IMAGES.value):
    Image.fromarray(rng.integers(0, 256, (n, n, 3), np.uint8)).save(
        os.path.join(imgs, f'{i:05d}.png'))
  base = ['--ckpt', ckpt, '--input', imgs, '--deg', 'sr2', '--sigma_y', '0.05',
          f'--steps={_STEPS.value}', f'--batch_size={_BATCH.value}', '--resize=resize']
  print(f'{_IMAGES.value} images of {n}x{n} -> {_SIZE.value}x{_SIZE.value}, tiny DDPM, '
        f'{_STEPS.value} steps, batch {_BATCH.value} per process, {os.cpu_count()} CPUs\n')
  print('| processes | --prefetch | images/s (sum, no compile) | input wait s (max) | wall s |')
  print('| --- | --- | --- | --- | --- |')
  for processes in map(int, _PROCESSES.value):
    for prefetch in map(int, _PREFETCH.value):
      out = os.path.join(tmp, f'out_p{processes}_f{prefetch}')
      rows, wall = _run(base, out, processes, prefetch)
      ips = sum(r['images_per_second'] for r in rows)
      wait = max(r['input_wait_seconds'] for r in rows)
      print(f'| {processes} | {prefetch} | {ips:.1f} | {wait:.2f} | {wall:.1f} |', flush=True)


if __name__ == '__main__':
  app.run(main)
