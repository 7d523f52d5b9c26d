"""Reading ahead: input files read and decoded on threads while the device computes."""

import collections
import concurrent.futures
import time


class Prefetcher:
  """`fn(item)` for `items` in order on `workers` threads, at most `depth` items ahead.

  Iterating yields (item, value, error): ValueError from `fn` (a bad file) comes back as
  `error`, anything else is raised. `workers` = 0 reads in the caller's thread when asked
  (no prefetching). `wait_s` is the time the caller spent waiting for results.
  """

  def __init__(self, fn, items, workers=4, depth=16):
    self.fn, self.items = fn, items
    self.workers, self.depth = int(workers), max(1, int(depth))
    self.wait_s = 0.0

  def _call(self, item):
    try:
      return self.fn(item), None
    except ValueError as e:
      return None, e

  def __iter__(self):
    if self.workers <= 0:
      for item in self.items:
        t0 = time.perf_counter()
        value, error = self._call(item)
        self.wait_s += time.perf_counter() - t0
        yield item, value, error
      return
    pool = concurrent.futures.ThreadPoolExecutor(self.workers, thread_name_prefix='prefetch')
    try:
      it = iter(self.items)
      window = collections.deque()
      for item in it:
        window.append((item, pool.submit(self._call, item)))
        if len(window) >= self.depth:
          break
      while window:
        item, fut = window.popleft()
        for nxt in it:
          window.append((nxt, pool.submit(self._call, nxt)))
          break
        t0 = time.perf_counter()
        value, error = fut.result()
        self.wait_s += time.perf_counter() - t0
        yield item, value, error
    finally:
      pool.shutdown(wait=False, cancel_futures=True)
