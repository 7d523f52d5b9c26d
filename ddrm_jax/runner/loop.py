"""The streaming loop of a run: this process's share of a `Plan`, on every local device."""

import concurrent.futures
import contextlib
import time

import numpy as np

from ddrm_jax import errors
from ddrm_jax.errors import RunError
from ddrm_jax.errors import one_line
from ddrm_jax.runner import distributed
from ddrm_jax.runner import journal
from ddrm_jax.runner import merge
from ddrm_jax.runner import outputs
from ddrm_jax.runner import prefetch
from ddrm_jax.runner import progress
from ddrm_jax.runner.job import Result
from ddrm_jax.runner.job import Stats


class OutOfMemory(RunError):
  """The device ran out of memory restoring `images` images of `shape` at a time."""

  def __init__(self, shape, images):
    super().__init__(f'out of memory restoring {"x".join(map(str, shape))} images, {images} '
                     'at a time')
    self.shape, self.images = tuple(shape), images


class PeerLost(RunError):
  """Another process of a multi-process run stopped before the end (killed, failed): this one
  ends too, its own images journaled and kept; resume completes the run."""

  def __init__(self, plan, restored, cause):
    super().__init__(
        f'process {plan.process_index} of {plan.process_count}: another process of this run '
        f'stopped before the end ({one_line(cause)[:160]}); this process restored {restored} '
        f'images, journaled in {plan.out_dir}: run again with §resume to complete the run')


def is_out_of_memory(e):
  text = f'{type(e).__name__} {e}'
  return isinstance(e, MemoryError) or 'RESOURCE_EXHAUSTED' in text or (
      'out of memory' in text.lower())


def run(plan, step, consts=(), *, devices=None, log=None, err=None):
  """Restores this process's share of `plan`; returns `Result`.

  `step(*consts, *group.consts, inputs, keys, labels)` -> the dict of `restore.restore_batch`
  (e.g. `restore.make_restore_step(...)` with consts (params, classifier_params) and group
  consts (op,)). Every process calls it (the end is a barrier). `log(msg)` / `err(msg)` print
  info / error lines. Ctrl-C (KeyboardInterrupt) and errors in a single process merge what is
  done before they propagate; the exception then carries `.result` (a `Result`).
  Out of memory on the device raises `OutOfMemory`.
  """
  return _Loop(plan, step, consts, devices, log, err).run()


class _Loop:
  """One process's run: reads ahead, dispatches rounds of images to the devices, writes each
  batch's files while the next computes, journals them, merges at the end."""

  def __init__(self, plan, step, consts, devices, log, err):
    import jax  # pylint: disable=g-import-not-at-top
    from ddrm_jax import sampler  # pylint: disable=g-import-not-at-top
    self.plan, self.job, self.step = plan, plan.job, step
    job = self.job
    self.log = log or progress.print_line
    self.err = err or (lambda m: progress.print_line(f'{job.prog}: error: {errors.plain(m)}'))
    self.devices = list(jax.local_devices() if devices is None else devices)
    self.mesh = sampler.batch_mesh(self.devices)
    self.per_round = len(self.devices) * job.images_per_device  # Images in one program.
    self.step_images = distributed.device_batch(job.batch_size, self.per_round)
    merge.start_out_dir(plan)
    distributed.barrier('ddrm-runner-start')
    self.consts = sampler.replicate(tuple(consts), self.mesh)
    mine = set(plan.share)
    self.chunks = []  # (group, indices) in the order they run.
    for g in job.all_groups():
      todo = [i for i in g.indices if i in mine and i not in job.errors]
      self.chunks += [(g, todo[lo:lo + self.step_images])
                      for lo in range(0, len(todo), self.step_images)]
    p, count = plan.process_index, plan.process_count
    self.bar = progress.Progress(len(plan.share), job.prog if count == 1 else
                                 f'{job.prog} [process {p}/{count}]', every_s=job.log_every_s)
    self.reader = prefetch.Prefetcher(
        lambda i: (job.read(job.files[i]), journal.file_digest(job.files[i])),
        [i for _, c in self.chunks for i in c],
        workers=job.workers if job.prefetch > 0 else 0,
        depth=max(1, job.prefetch) * self.step_images)
    self.journal = None
    self.failed, self.compiled, self.digests = [], {}, {}
    self.restored, self.compute_s, self.compile_s = 0, 0.0, None
    self.t_start = time.time()
    self.writer = None

  # -- records and files --------------------------------------------------------------------

  def _journal(self):
    if self.journal is None:
      self.journal = journal.Journal(journal.journal_path(self.plan.out_dir,
                                                          self.plan.process_index))
    return self.journal

  def fail(self, i, message):
    self.failed.append(self.job.files[i])
    self.bar.clear()
    self.err(message)
    self._journal().append([{'index': i, 'file': self.job.files[i],
                             'error': errors.plain(message)}])

  def _fetch(self, group, ok, outs):
    import jax  # pylint: disable=g-import-not-at-top
    try:
      outs = jax.device_get(outs)
    except Exception as e:  # pylint: disable=broad-except
      if is_out_of_memory(e):
        raise OutOfMemory(group.key or (), len(ok)) from None
      raise
    return {k: np.concatenate([o[k][:n] for n, o in outs]) for k in outs[0][1]}

  def _record(self, group, res, j, i):
    """The journal record of image i (row j of `res`) and its files, or None (non-finite)."""
    job = self.job
    if not all(np.isfinite(res[k][j]).all() for k in ('samples', 'restored') if k in res):
      self.fail(i, f'{job.files[i]}: the restoration has non-finite values (NaN or inf); '
                'nothing written for it (check the checkpoint and §sigma_y)')
      return None
    paths = dict(outputs.output_paths(job.names[i], job.paper, job.num_samples),
                 **job.extras.paths(job.names[i]))
    rec = {'index': i, 'file': job.files[i], 'name': job.names[i], 'outputs': paths,
           'input_digest': self.digests.pop(i, None)}
    if group.info is not None:
      rec['info'] = group.info
    if job.paper:
      m = {k: outputs.json_number(res[k][j]) for k in outputs.metric_fields(job.num_samples)}
      m.update(job.extras.metrics(res, j))
      rec['metrics'] = m
    return rec

  def _write(self, paths, res, j):
    out_dir = self.plan.out_dir
    outputs.write_outputs(out_dir, paths, res, j)
    self.job.extras.write(lambda rel: outputs.full_path(out_dir, rel), paths, res, j)

  def finish(self, pending):
    """Fetches a dispatched batch, writes its files, then journals its records."""
    group, ok, outs, inputs, t_sent = pending
    res = self._fetch(group, ok, outs)
    self.compute_s += time.time() - t_sent
    res = self.job.extras.adjust(res)
    if self.job.paper:
      res['original'] = inputs
    records = [r for r in (self._record(group, res, j, i) for j, i in enumerate(ok)) if r]
    rows = {i: j for j, i in enumerate(ok)}
    j_ = self._journal()
    # PNG encoding releases the GIL.
    list(self.writer.map(lambda r: self._write(r['outputs'], res, rows[r['index']]), records))
    j_.append(records)  # Only after every file of the batch is in place.
    self.restored += len(records)
    self.bar.update(len(ok))
    if self.job.on_batch is not None:
      self.job.on_batch({'indices': list(ok), 'restored': self.restored,
                         'rss': progress.rss_bytes(), 'time': time.time()})

  # -- the devices ---------------------------------------------------------------------------

  def _compiled(self, group, args, inputs):
    gid = id(group)
    if gid not in self.compiled:
      if not hasattr(self.step, 'lower'):
        self.compiled[gid] = self.step
        return self.step
      t0 = time.time()
      self.compiled[gid] = self.step.lower(*args).compile()
      seconds = time.time() - t0
      self.compile_s = (self.compile_s or 0.0) + seconds
      self.bar.clear()
      job, num_dev, k = self.job, len(self.devices), self.job.images_per_device
      self.log(f'{job.prog}: compiled the restore step in {seconds:.1f} s ({self.per_round} rows '
               f'on {num_dev} device{"s" if num_dev > 1 else ""}: {k} image{"s" if k > 1 else ""}'
               f' x {job.num_samples} samples per network batch, '
               f'{"x".join(map(str, inputs.shape[1:]))} images{group.note})')
    return self.compiled[gid]

  def dispatch(self, group, ok, arrays):
    """Rounds of images_per_device images per device; returns [(images in the round, its
    output)]."""
    from ddrm_jax import restore  # pylint: disable=g-import-not-at-top
    from ddrm_jax import sampler  # pylint: disable=g-import-not-at-top
    job, per_round, outs = self.job, self.per_round, []
    for lo in range(0, len(ok), per_round):
      idx = ok[lo:lo + per_round]
      pad = per_round - len(idx)  # One static shape: one compilation per group.
      inputs = np.stack(arrays[lo:lo + per_round] + [arrays[lo + len(idx) - 1]] * pad)
      idx_p = idx + [idx[-1]] * pad
      keys = restore.index_keys(job.seed, idx_p)
      labels = (None if job.labels is None else
                np.asarray([job.labels[i] for i in idx_p], np.int32))
      placed = sampler.shard_batch((inputs.astype(np.float32), keys, labels), self.mesh)
      args = tuple(self.consts) + tuple(group.consts) + tuple(placed)
      # Computes while earlier work is written.
      outs.append((len(idx), self._compiled(group, args, inputs)(*args)))
    return outs

  # -- the run -------------------------------------------------------------------------------

  def stats(self):
    run_s = time.time() - self.t_start
    busy = run_s - (self.compile_s or 0.0)  # Throughput without the one-off compilation.
    ips = self.restored / busy if busy > 0 and self.restored else 0.0
    return Stats(restored=self.restored, failed=len(self.failed), skipped=self.plan.skipped,
                 seconds=run_s, images_per_second=ips, input_wait_seconds=self.reader.wait_s,
                 compute_seconds=self.compute_s, compile_seconds=self.compile_s,
                 rss_mib=progress.rss_bytes() / 2**20)

  def result(self, mean=None, all_done=None):
    s = self.stats()
    return Result(out_dir=self.plan.out_dir, total=len(self.job.files), restored=self.restored,
                  skipped=self.plan.skipped, failed=self.failed, mean=mean, all_done=all_done,
                  compile_s=self.compile_s, run_s=s.seconds, images_per_s=s.images_per_second,
                  input_wait_s=self.reader.wait_s)

  def _batches(self):
    """Reads each chunk; failures are reported; yields (group, indices, arrays) to dispatch."""
    items = iter(self.reader)
    for group, chunk in self.chunks:
      arrays, ok = [], []
      for _ in chunk:
        i, x, e = next(items)
        if e is None:
          x, self.digests[i] = x
          arrays.append(np.asarray(x, np.float32))
          ok.append(i)
          continue
        self.fail(i, errors.marked(e))
        self.bar.update(1)
      if ok:
        yield group, ok, arrays

  def _stream(self):
    pending = None
    try:
      for i in self.plan.share:  # Known bad beforehand (e.g. too small for the tiles).
        if i in self.job.errors:
          self.fail(i, self.job.errors[i])
          self.bar.update(1)
      for group, ok, arrays in self._batches():
        t_sent = time.time()
        try:
          outs = self.dispatch(group, ok, arrays)
        except Exception as e:  # pylint: disable=broad-except
          if is_out_of_memory(e):
            raise OutOfMemory(group.key or np.shape(arrays[0]), len(ok)) from None
          raise
        if pending is not None:
          done, pending = pending, None
          self.finish(done)
        pending = (group, ok, outs, np.stack(arrays) if self.job.paper else None, t_sent)
      if pending is not None:
        done, pending = pending, None
        self.finish(done)
    except KeyboardInterrupt:
      if pending is not None:  # Already computing: keep it (a second Ctrl-C stops at once).
        done, pending = pending, None
        self.finish(done)
      raise

  def run(self):
    plan = self.plan
    self.writer = concurrent.futures.ThreadPoolExecutor(max(1, self.job.workers),
                                                        thread_name_prefix='write')
    try:
      self._stream()
    except BaseException as e:
      mean, all_done = None, None
      if plan.process_count == 1:  # What is done so far, merged (resumable).
        mean, all_done = merge.merge(plan, [self.stats()], interrupted=True)
      with contextlib.suppress(AttributeError, TypeError):
        e.result = self.result(mean, all_done)
      raise
    finally:
      self._close()
    mine = self.stats()
    try:
      rows = (distributed.allgather_rows(mine.to_row()) if plan.process_count > 1
              else np.asarray([mine.to_row()], np.float64))
      distributed.barrier('ddrm-runner-done')
    except Exception as e:  # pylint: disable=broad-except  (the collective of a lost peer)
      raise PeerLost(plan, self.restored, e) from None
    mean, all_done = None, None
    if plan.process_index == 0:
      mean, all_done = merge.merge(plan, [Stats.from_row(r) for r in rows])
    return self.result(mean, all_done)

  def _close(self):
    if self.writer is not None:
      self.writer.shutdown(wait=True)
    self.bar.close()
    if self.journal is not None:
      self.journal.close()
      self.journal = None
