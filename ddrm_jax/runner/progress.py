"""Progress of a run: images/s and ETA (a tqdm bar on a terminal, a line a minute in logs),
and the memory the process holds."""

import math
import os
import sys
import time


def print_line(message):
  """One line on stderr, at once (cluster logs)."""
  print(message, file=sys.stderr, flush=True)


def rss_bytes():
  """This process's resident memory now (Linux), or its peak elsewhere."""
  try:
    with open('/proc/self/statm') as fh:
      return int(fh.read().split()[1]) * os.sysconf('SC_PAGE_SIZE')
  except (OSError, ValueError, IndexError):
    import resource  # pylint: disable=g-import-not-at-top
    scale = 1 if sys.platform == 'darwin' else 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


class Progress:
  """Images/s and ETA of this process: a tqdm bar on a terminal, else a line every
  `every_s` seconds (cluster logs)."""

  def __init__(self, total, desc, every_s=60.0, file=None):
    self.total, self.desc, self.every_s = total, desc, every_s
    self.file = file or sys.stderr
    self.done, self.t0, self.last = 0, time.time(), time.time()
    self.bar = None
    if total and self.file.isatty():
      from tqdm import tqdm  # pylint: disable=g-import-not-at-top
      self.bar = tqdm(total=total, unit='img', desc=desc, file=self.file)

  def rate(self):
    dt = time.time() - self.t0
    return self.done / dt if dt > 0 else 0.0

  def line(self):
    r = self.rate()
    eta = (self.total - self.done) / r if r > 0 else float('nan')
    eta_s = '-'
    if math.isfinite(eta):
      eta_s = f'{int(eta) // 3600}:{int(eta) // 60 % 60:02d}:{int(eta) % 60:02d}'
    return f'{self.desc}: {self.done}/{self.total} images, {r:.2f} img/s, ETA {eta_s}'

  def update(self, n):
    self.done += n
    if self.bar is not None:
      self.bar.update(n)
    elif time.time() - self.last >= self.every_s:
      self.last = time.time()
      print(self.line(), file=self.file, flush=True)

  def clear(self):
    if self.bar is not None:
      self.bar.clear()

  def close(self):
    if self.bar is not None:
      self.bar.close()
