"""Dataset-scale runs (ddrm_jax/runner.py and its flags in ddrm-restore).

Fake CPU devices need XLA_FLAGS before jax starts, and jax.distributed one process per rank, so
those runs are subprocesses (`python -c RUN ...`); the rest runs in-process. The network is the
tiny random 16x16 DDPM of test_restore_cli (CLI runs) or a stand-in (runner runs).
"""

import ctypes
import ctypes.util
import gc
import io as std_io
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from unittest import mock

from absl.testing import absltest
import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

from ddrm_jax import checkpoints
from ddrm_jax import io
from ddrm_jax import operators
from ddrm_jax import restore
from ddrm_jax import runner
import test_restore_cli as T

TESTS_DIR = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(TESTS_DIR)
NUM_IMAGES = 7

# ddrm-restore in a fresh process; DDRM_TEST_SLOW_READ=s sleeps s seconds in every read but
# those of the first two images (a slow disk); DDRM_TEST_STALL=s sleeps s seconds once the
# first journal line is on disk (a process that hangs mid-run, for a kill to find it there).
RUN = """
import os, sys, time
sys.path.insert(0, {repo!r})
from ddrm_jax.cli import restore as cli
from ddrm_jax.pipeline import plan
from ddrm_jax.runner import journal
stall = float(os.environ.get('DDRM_TEST_STALL', '0'))
if stall:
  append = journal.Journal.append
  def stalling_append(self, records):
    append(self, records)
    time.sleep(stall)
  journal.Journal.append = stalling_append
slow = float(os.environ.get('DDRM_TEST_SLOW_READ', '0'))
if slow:
  read = plan.read_input
  def slow_read(run, path, x_shape=None):
    if run.files.index(path) >= 2:
      time.sleep(slow)
    return read(run, path, x_shape)
  plan.read_input = slow_read
sys.exit(cli.main(['ddrm-restore'] + sys.argv[1:]))
"""


def _free_port():
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def _start(argv, devices=1, slow_read=0.0, stall=0.0):
  env = dict(os.environ, JAX_PLATFORMS='cpu', DDRM_TEST_SLOW_READ=str(slow_read),
             DDRM_TEST_STALL=str(stall))
  env['XLA_FLAGS'] = (env.get('XLA_FLAGS', '') +
                      f' --xla_force_host_platform_device_count={devices}').strip()
  return subprocess.Popen([sys.executable, '-c', RUN.format(repo=REPO)] + list(argv), env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _finish(proc, timeout=300):
  out, err = proc.communicate(timeout=timeout)
  return proc.returncode, out + err


def _tree(d):
  """{path relative to d: path} of every file under d."""
  out = {}
  for root, _, names in os.walk(d):
    for n in names:
      p = os.path.join(root, n)
      out[os.path.relpath(p, d)] = p
  return out


class RunnerCliTest(T.RunFolderCase, absltest.TestCase):
  """ddrm-restore on fake devices, two processes, kills and resumes."""

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.dir, cls.ckpt, cls.imgs = T.tiny_run_folder(
        seed=0, names=[f'im{k}.png' for k in range(NUM_IMAGES)])
    cls.args = ['--ckpt', cls.ckpt, '--input', cls.imgs, '--deg', 'sr2', '--sigma_y', '0.1',
                '--seed', '3', '--steps=2']
    cls.ref = os.path.join(cls.dir, 'ref')
    status, _, err = T._run(cls.args + ['--batch_size', '4', '--output', cls.ref])
    assert status == 0, err

  def assert_same_run(self, out):
    ref, got = _tree(self.ref), _tree(out)
    pngs = sorted(k for k in ref if k.endswith('.png'))
    self.assertLen(pngs, 4 * NUM_IMAGES + 1)  # 4 kinds + grid.png.
    self.assertEqual(sorted(k for k in got if k.endswith('.png')), pngs)
    for k in pngs:
      np.testing.assert_array_equal(np.asarray(Image.open(got[k])),
                                    np.asarray(Image.open(ref[k])), err_msg=k)
    with open(ref['metrics.json']) as fh:
      m_ref = json.load(fh)
    with open(got['metrics.json']) as fh:
      m_got = json.load(fh)
    self.assertEqual([r['file'] for r in m_got['images']], [r['file'] for r in m_ref['images']])
    for a, b in zip(m_got['images'] + [m_got['mean']], m_ref['images'] + [m_ref['mean']]):
      self.assertEqual(set(a), set(b))
      for k in a:
        if k != 'file':
          self.assertAlmostEqual(a[k], b[k], places=4, msg=k)
    self.assertEqual([k for k in got if io.TMP_MARK in k], [])

  def test_four_devices_and_two_processes_give_the_same_run(self):
    four = os.path.join(self.dir, 'four')
    procs = [_start(self.args + ['--batch_size', '2', '--output', four], devices=4)]
    two = os.path.join(self.dir, 'two')
    port = _free_port()
    for pid in range(2):  # Two processes of two devices each, 3 images (4 rows) a step.
      procs.append(_start(self.args + [
          '--batch_size', '3', '--output', two, f'--coordinator_address=127.0.0.1:{port}',
          '--num_processes=2', f'--process_id={pid}'], devices=2))
    results = [_finish(p) for p in procs]
    for status, log in results:
      self.assertEqual(status, 0, log)
    self.assertIn('compiled the restore step', results[0][1])
    self.assertIn('4 rows on 4 devices', results[0][1])
    self.assertIn('restored 4 of 4 images (process 0 of 2)', results[1][1])
    self.assertIn('restored 3 of 3 images (process 1 of 2)', results[2][1])
    self.assert_same_run(four)
    self.assert_same_run(two)
    with open(os.path.join(two, 'run.json')) as fh:
      info = json.load(fh)
    self.assertTrue(info['complete'])
    self.assertEqual([p['restored'] for p in info['per_process']], [4, 3])
    self.assertTrue(all(p['images_per_second'] > 0 for p in info['per_process']))
    # Resumed by two processes again: both agree that there is nothing to do.
    port = _free_port()
    procs = [_start(self.args + ['--output', two, '--resume', '--num_processes=2',
                                 f'--coordinator_address=127.0.0.1:{port}', f'--process_id={p}'])
             for p in range(2)]
    for status, log in [_finish(p) for p in procs]:
      self.assertEqual(status, 0, log)
      self.assertIn('nothing to do', log)

  def test_killed_run_resumes_to_the_same_files(self):
    out = os.path.join(self.dir, 'killed')
    proc = _start(self.args + ['--batch_size', '2', '--output', out], slow_read=1.0)
    journal = runner.journal_path(out, 0)
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
      if os.path.exists(journal) and os.path.getsize(journal):
        break
      time.sleep(0.05)
    self.assertIsNone(proc.poll(), 'the run ended before it could be killed')
    proc.send_signal(signal.SIGKILL)
    status, _ = _finish(proc)
    self.assertEqual(status, -signal.SIGKILL)
    with open(journal) as fh:
      self.assertLess(len(fh.read().splitlines()), NUM_IMAGES)
    for k, p in _tree(out).items():  # Only complete images (and maybe a temporary file).
      if k.endswith('.png'):
        Image.open(p).load()
    # Resumed by two processes: process 1 also skips images in process 0's old journal.
    port = _free_port()
    procs = [_start(self.args + ['--batch_size', '3', '--output', out, '--resume',
                                 f'--coordinator_address=127.0.0.1:{port}',
                                 '--num_processes=2', f'--process_id={p}']) for p in range(2)]
    logs = [_finish(p) for p in procs]
    for status, log in logs:
      self.assertEqual(status, 0, log)
    self.assertRegex(logs[0][1], r'restored [0-3] of 4 images \(process 0 of 2\), [1-4] done')
    self.assertRegex(logs[1][1], r'restored [0-2] of 3 images \(process 1 of 2\), [1-3] done')
    self.assert_same_run(out)

  def test_a_killed_peer_loses_no_work_of_the_others(self):
    # kill -9 of process 1 mid-run: process 0 keeps its images and its folder (no rmtree), ends
    # with one line (no C++ abort), and a resumed run completes the same files.
    # Process 1 hangs after its first journal line, so the kill finds it mid-run: with slow
    # reads only, its prefetch read ahead in parallel and a loaded machine let it pass the
    # final barrier before the kill arrived (JAX's shutdown barrier then aborted process 0).
    out = os.path.join(self.dir, 'peer_killed')
    port = _free_port()
    procs = [_start(self.args + ['--batch_size', '1', '--output', out,
                                 f'--coordinator_address=127.0.0.1:{port}', '--num_processes=2',
                                 f'--process_id={p}'], slow_read=1.0, stall=120.0 if p else 0.0)
             for p in range(2)]
    journal = runner.journal_path(out, 1)
    deadline = time.time() + 240
    while time.time() < deadline and procs[1].poll() is None:
      if os.path.exists(journal) and os.path.getsize(journal):
        break
      time.sleep(0.05)
    self.assertIsNone(procs[1].poll(), 'process 1 ended before it could be killed')
    procs[1].send_signal(signal.SIGKILL)
    _finish(procs[1])
    status, log = _finish(procs[0])
    self.assertEqual(status, 1, log)
    self.assertNotIn('Check failure', log)
    errors = [l for l in log.splitlines() if 'error:' in l]
    self.assertLen(errors, 1, log)
    self.assertIn('another process of this run stopped before the end', errors[0])
    self.assertTrue(os.listdir(os.path.join(out, 'restored')))
    port = _free_port()
    procs = [_start(self.args + ['--output', out, '--resume', '--num_processes=2',
                                 f'--coordinator_address=127.0.0.1:{port}', f'--process_id={p}'])
             for p in range(2)]
    for status, log in [_finish(p) for p in procs]:
      self.assertEqual(status, 0, log)
    self.assert_same_run(out)

  def test_resume_refuses_other_settings(self):
    out = os.path.join(self.dir, 'other')
    shutil.copytree(self.ref, out)
    before = {k: os.path.getmtime(p) for k, p in _tree(out).items()}
    for extra, what in ((['--sigma_y', '0.2'], r'sigma_y \(0.1 there, 0.2 now\)'),
                        (['--steps=3'], r'steps \(2 there, 3 now\)'),
                        (['--input', os.path.join(self.imgs, 'im1.png')], r'inputs \(7 there')):
      status, _, err = T._run(self.args + extra + ['--output', out, '--resume'])
      self.assertEqual(status, 1)
      self.assertLen(err, 1, err)
      self.assertRegex(err[0], r'^ddrm-restore: error: --resume: .* holds a run with other '
                       r'settings: .*' + what)
    self.assertEqual({k: os.path.getmtime(p) for k, p in _tree(out).items()}, before)
    # Without --resume an existing folder is refused as before; --resume needs --output.
    status, _, err = T._run(self.args + ['--output', out])
    self.assertRegex(err[0], 'already exists; pass --overwrite')
    status, _, err = T._run(self.args + ['--resume'])
    self.assertRegex(err[0], '--resume needs the --output')
    # --resume continues the run, --overwrite replaces it: not both.
    status, _, err = T._run(self.args + ['--output', out, '--resume', '--overwrite'])
    self.assertEqual(status, 1)
    self.assertRegex(err[0], 'give --resume .* or --overwrite .*, not both')
    self.assertEqual({k: os.path.getmtime(p) for k, p in _tree(out).items()}, before)

  def test_resume_of_a_finished_run_does_nothing(self):
    out = os.path.join(self.dir, 'finished')
    shutil.copytree(self.ref, out)
    before = {k: os.path.getmtime(p) for k, p in _tree(out).items()}
    with mock.patch.object(checkpoints, 'load_model', side_effect=AssertionError('loaded')):
      status, stdout, err = T._run(self.args + ['--batch_size', '3', '--output', out,
                                                '--resume'])
    self.assertEqual(status, 0, err)
    self.assertIn('all 7 images', stdout)
    self.assertIn('nothing to do', stdout)
    self.assertEqual({k: os.path.getmtime(p) for k, p in _tree(out).items()}, before)

  def test_input_list(self):
    lst = os.path.join(self.dir, 'subset.txt')
    with open(lst, 'w') as fh:
      fh.write('# an evaluation subset\nimgs/im3.png\n\nimgs/im1.png\n')
    self.assertEqual(io.expand_inputs(lst), [os.path.join(self.dir, 'imgs', n)
                                             for n in ('im3.png', 'im1.png')])
    with open(lst, 'a') as fh:
      fh.write('imgs/nope.png\n')
    status, _, err = T._run(self.args + ['--input', lst])
    self.assertEqual(status, 1)
    self.assertRegex(err[0], r'subset.txt: no such file: line 5: imgs/nope.png$')


# -- the runner with a stand-in network ------------------------------------------------------------

  def test_a_process_that_never_starts_ends_the_wait_in_one_line(self):
    # Process 0 of 2 whose peer never starts: no 300 s wait and C++ abort, but one line after
    # distributed_timeout seconds naming what did not connect.
    t0 = time.time()
    proc = _start(['--ckpt', self.ckpt, '--input', self.imgs, '--output',
                   os.path.join(self.dir, 'lonely'), '--coordinator_address',
                   f'127.0.0.1:{_free_port()}', '--num_processes', '2', '--process_id', '0',
                   '--distributed_timeout', '3', '--steps', '2'])
    _, err = proc.communicate(timeout=120)
    self.assertEqual(proc.returncode, 1, err)
    lines = [l for l in err.splitlines() if l.strip()]
    self.assertTrue(any(re.search(r'waiting up to 3 s for all 2 processes at 127\.0\.0\.1', l)
                        for l in lines), err)
    self.assertRegex(lines[-1], r'^ddrm-restore: error: process 0: processes 1\.\.1 did not all '
                     r'connect .* within 3 s')
    self.assertNotIn('Check failure', err)
    self.assertLess(time.time() - t0, 100)


def _fake_step(compute_s, events):
  """A step that takes compute_s seconds (on the host) and returns what a restore step does."""
  def step(inputs, keys, labels):
    del keys, labels
    t0 = time.perf_counter()
    time.sleep(compute_s)
    x = np.asarray(inputs)
    events.append(('step', t0, time.perf_counter()))
    zero = np.zeros(x.shape[0], np.float32)
    return {'restored': x, 'degraded': x, 'baseline': x, 'psnr': zero, 'ssim': zero,
            'baseline_psnr': zero, 'baseline_ssim': zero}
  return step


class RunnerTest(absltest.TestCase):

  def setUp(self):
    super().setUp()
    self.dir = tempfile.mkdtemp()
    self.addCleanup(shutil.rmtree, self.dir, ignore_errors=True)

  def _job(self, n, read, **kw):
    names = [f'im{i:04d}' for i in range(n)]
    out = os.path.join(self.dir, kw.pop('out', 'out'))
    return runner.Job(files=names, names=names, read=read, out_dir=out, **kw)

  def test_prefetch_reads_while_the_device_computes(self):
    read_s, compute_s, n, batch = 0.04, 0.2, 24, 4

    def run(prefetch):
      events = []
      lock = threading.Lock()

      def read(name):
        t0 = time.perf_counter()
        time.sleep(read_s)
        with lock:
          events.append(('read', t0, time.perf_counter()))
        return np.zeros((4, 4, 3), np.float32)

      job = self._job(n, read, batch_size=batch, prefetch=prefetch, workers=2,
                      out=f'p{prefetch}')
      res = runner.run(runner.prepare(job), _fake_step(compute_s, events), err=self.fail)
      self.assertEqual(res.restored, n)
      steps = [(a, b) for k, a, b in events if k == 'step']
      reads = [(a, b) for k, a, b in events if k == 'read']
      # The share of the reading time during which a step was computing.
      during = sum(max(0.0, min(b, d) - max(a, c)) for a, b in reads for c, d in steps)
      return res.input_wait_s, during / sum(b - a for a, b in reads)

    wait_on, during_on = run(prefetch=2)
    wait_off, during_off = run(prefetch=0)
    # Without prefetching the loop waits for every read and no read overlaps a step.
    self.assertGreaterEqual(wait_off, n * read_s * 0.9)
    self.assertEqual(during_off, 0.0)
    # With it, most reading happens while the steps compute and the loop hardly waits (the
    # first batch aside), so a step takes its compute time.
    self.assertGreater(during_on, 0.5)
    self.assertLess(wait_on, 0.5 * wait_off)

  def test_memory_stays_flat_over_many_images(self):
    n, size = 1200, 32
    src = os.path.join(self.dir, 'src')
    os.makedirs(src)
    rng = np.random.default_rng(0)
    files = []
    for i in range(n):
      files.append(os.path.join(src, f'{i:05d}.png'))
      Image.fromarray(rng.integers(0, 256, (size, size, 3), np.uint8)).save(files[-1])
    settings = restore.BatchSettings(deg='sr2', steps=2, sigma_y=0.1)
    step = restore.make_restore_step(lambda p, x, t: p * x, settings)
    op = operators.make('sr2', (size, size, 3))
    rss = []

    def live_rss(_):  # Live memory: garbage collected, freed pages returned to the system.
      gc.collect()
      if trim is not None:
        trim(0)
      rss.append(runner.rss_bytes())
    trim = getattr(ctypes.CDLL(ctypes.util.find_library('c')), 'malloc_trim', None)
    job = runner.Job(files=files, names=io.unique_stems(files), read=io.read_image,
                     batch_size=50, out_dir=os.path.join(self.dir, 'out'), on_batch=live_rss)
    res = runner.run(runner.prepare(job), step, (jnp.float32(0.5), None, op), err=self.fail)
    self.assertEqual(res.restored, n)
    self.assertLen(rss, n // 50)
    # The median over the second 600 images against that over images 250..600 (after the first
    # ones warmed up allocators and threads): their medians lie ~475 images apart, and keeping
    # the inputs and outputs of the images would add >= 4 x 475 x 32 x 32 x 3 x 4 B = 23 MB
    # between them; spikes of ~10 MB come and go.
    half = len(rss) // 2
    growth = (np.median(rss[half:]) - np.median(rss[5:half])) / 2**20
    self.assertLess(growth, 16, f'RSS grew by {growth:.1f} MiB: {[r >> 20 for r in rss]}')
    with open(os.path.join(self.dir, 'out', 'metrics.json')) as fh:
      self.assertLen(json.load(fh)['images'], n)

  def test_interrupted_run_merges_what_is_done_and_resumes(self):
    events = []

    def read(name, stop_at=None):
      if name == stop_at:
        raise KeyboardInterrupt
      return np.full((4, 4, 3), int(name[2:]) / 10 - 0.5, np.float32)

    job = self._job(10, lambda n: read(n, 'im0006'), batch_size=2, workers=1)
    with self.assertRaises(KeyboardInterrupt):
      runner.run(runner.prepare(job), _fake_step(0.0, events), err=self.fail)
    out = job.out_dir
    with open(os.path.join(out, 'metrics.json')) as fh:
      self.assertEqual([r['file'] for r in json.load(fh)['images']],
                       [f'im{i:04d}' for i in range(6)])
    with open(os.path.join(out, 'run.json')) as fh:
      self.assertFalse(json.load(fh)['complete'])
    job = self._job(10, read, batch_size=3, resume=True)
    res = runner.run(runner.prepare(job), _fake_step(0.0, events), err=self.fail)
    self.assertEqual((res.restored, res.skipped, res.all_done), (4, 6, 10))
    with open(os.path.join(out, 'run.json')) as fh:
      self.assertTrue(json.load(fh)['complete'])
    np.testing.assert_array_equal(io.read_image(os.path.join(out, 'restored', 'im0007.png')),
                                  io.read_image(os.path.join(out, 'original', 'im0007.png')))
    self.assertTrue(runner.prepare(job).finished)

  def test_progress_line_for_logs(self):
    buf = std_io.StringIO()
    bar = runner.Progress(10, 'ddrm-restore [process 1/2]', every_s=0.0, file=buf)
    bar.t0 -= 2.0  # Two seconds ago.
    bar.update(4)
    self.assertRegex(buf.getvalue(), r'^ddrm-restore \[process 1/2\]: 4/10 images, '
                     r'2\.\d\d img/s, ETA 0:00:0[23]\n$')

  def test_journal_drops_a_cut_line_and_atomic_write_leaves_no_temporary(self):
    path = os.path.join(self.dir, 'progress', 'process-00000.jsonl')
    j = runner.Journal(path)
    j.append([{'index': 0, 'file': 'a', 'outputs': []}])
    j.close()
    with open(path, 'a') as fh:
      fh.write('{"index": 1, "fi')  # Killed mid-line.
    j = runner.Journal(path)
    j.append([{'index': 2, 'file': 'c', 'error': 'bad'}])
    j.close()
    self.assertEqual(sorted(runner.read_journals(self.dir)), [0, 2])

    def broken(fh):
      fh.write(b'half')
      raise OSError('disk full')
    with self.assertRaises(OSError):
      io.atomic_write(os.path.join(self.dir, 'x.png'), broken)
    self.assertEqual(sorted(os.listdir(self.dir)), ['progress'])

  def test_shares_and_device_batch(self):
    shares = [list(runner.process_share(7, p, 3)) for p in range(3)]
    self.assertEqual(sorted(sum(shares, [])), list(range(7)))
    self.assertEqual(shares[1], [1, 4])
    self.assertEqual([runner.device_batch(b, 4) for b in (1, 4, 5)], [4, 4, 8])

  def test_distributed_flags(self):
    # The library names settings; the command line shows them as flags.
    with self.assertRaisesRegex(runner.RunError,
                                '^coordinator_address also needs num_processes, process_id') as cm:
      runner.initialize_distributed('127.0.0.1:1234')
    self.assertIn('--coordinator_address also needs --num_processes, --process_id',
                  cm.exception.with_flags())
    with self.assertRaisesRegex(runner.RunError, r'^process_id must be in \[0, 2\)'):
      runner.initialize_distributed('127.0.0.1:1234', 2, 2)
    with self.assertRaisesRegex(runner.RunError, 'leave out num_processes') as cm:
      runner.initialize_distributed(num_processes=2, auto=True)
    self.assertIn('leave out --num_processes', cm.exception.with_flags())
    runner.initialize_distributed()  # Nothing asked: nothing done.


if __name__ == '__main__':
  absltest.main()
