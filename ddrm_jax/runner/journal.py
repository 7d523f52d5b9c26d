"""What a run records as it goes: JSON files, each process's journal of image records, and the
digest of the input list that a resumed run must share."""

import hashlib
import json
import os

from ddrm_jax import io
from ddrm_jax.errors import RunError
from ddrm_jax.errors import one_line

PROGRESS_DIR = 'progress'


def write_json(path, obj):
  """Writes `obj` as indented JSON, atomically (`io.atomic_write`)."""
  text = json.dumps(obj, indent=1, default=str)
  io.atomic_write(path, lambda fh: fh.write(text), binary=False)


def read_json(path):
  """The object in a JSON file, None when there is none; RunError when it is unreadable."""
  if not os.path.exists(path):
    return None
  try:
    with open(path) as fh:
      return json.load(fh)
  except (OSError, ValueError) as e:
    raise RunError(f'{path}: unreadable ({one_line(e)})') from None


def journal_path(out_dir, process_index):
  return os.path.join(out_dir, PROGRESS_DIR, f'process-{process_index:05d}.jsonl')


class Journal:
  """A process's append-only JSON-lines file of image records."""

  def __init__(self, path):
    self.path = path
    os.makedirs(os.path.dirname(path), exist_ok=True)
    self._fh = open(path, 'a+b')
    self._fh.seek(0, os.SEEK_END)
    size = self._fh.tell()
    if size:  # Drop a line cut by a kill.
      self._fh.seek(0)
      data = self._fh.read()
      keep = data.rfind(b'\n') + 1
      if keep != size:
        self._fh.truncate(keep)
      self._fh.seek(0, os.SEEK_END)

  def append(self, records):
    if not records:
      return
    self._fh.write(b''.join(json.dumps(r).encode() + b'\n' for r in records))
    self._fh.flush()
    os.fsync(self._fh.fileno())

  def close(self):
    self._fh.close()


def read_journals(out_dir):
  """{index: record} from every process's journal; a record that restored the image wins over
  one that failed it. Unparsable (cut) lines are skipped."""
  records = {}
  d = os.path.join(out_dir, PROGRESS_DIR)
  if not os.path.isdir(d):
    return records
  for name in sorted(os.listdir(d)):
    if not (name.startswith('process-') and name.endswith('.jsonl')):
      continue
    with open(os.path.join(d, name), 'rb') as fh:
      for line in fh:
        try:
          r = json.loads(line)
          i = int(r['index'])
        except (ValueError, KeyError, TypeError):
          continue
        if 'outputs' in r or i not in records:
          records[i] = r
  return records


def flat_outputs(outputs):
  """The relative paths of an image's outputs ({kind: path or [paths]})."""
  return [p for v in outputs.values() for p in (v if isinstance(v, list) else [v])]


def is_complete(out_dir, record):
  """Whether a journal record restored its image and every output file it names is there."""
  if 'outputs' not in record:
    return False
  for rel in flat_outputs(record['outputs']):
    try:
      if os.path.getsize(os.path.join(out_dir, rel)) == 0:
        return False
    except OSError:
      return False
  return True


def file_digest(path):
  """{'size', 'mtime_ns', 'sha256'} of an input file, recorded with its restoration (None when
  it is not a readable file)."""
  h = hashlib.sha256()
  try:
    st = os.stat(path)
    with open(path, 'rb') as fh:
      for block in iter(lambda: fh.read(1 << 20), b''):
        h.update(block)
  except OSError:
    return None
  return {'size': st.st_size, 'mtime_ns': st.st_mtime_ns, 'sha256': h.hexdigest()}


def same_input(record, path):
  """Whether input `path` is still the file a journal record restored (size and mtime, else its
  bytes); records without a digest (older runs) are trusted."""
  old = record.get('input_digest')
  if not isinstance(old, dict):
    return True
  try:
    st = os.stat(path)
  except OSError:
    return False
  if (st.st_size, st.st_mtime_ns) == (old.get('size'), old.get('mtime_ns')):
    return True
  now = file_digest(path)
  return now is not None and now['sha256'] == old.get('sha256')


def inputs_digest(files):
  """A digest of the input list (absolute paths, in order): a resumed run must have the same."""
  h = hashlib.sha256()
  for f in files:
    h.update(os.path.abspath(f).encode() + b'\n')
  return h.hexdigest()
