"""The docs cannot rot: every ```python block of README.md and docs/*.md runs as printed.

Each block runs on its own in a fresh Python (PYTHONPATH the repository, JAX on the CPU, the
working directory an empty temporary folder), with the bundled prior and sample images. A block
fenced ```python no-run is not run; it must name the checkpoint it needs. The blocks share one
JAX compilation cache, so programs that several blocks compile are compiled once.
"""

import glob
import os
import re
import shutil
import subprocess
import sys
import tempfile

from absl.testing import absltest
from absl.testing import parameterized

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PAGES = ['README.md'] + sorted(os.path.relpath(p, ROOT)
                               for p in glob.glob(os.path.join(ROOT, 'docs', '*.md')))
FENCE = re.compile(r'^```(\S*)[ \t]*(.*)$')
TIMEOUT_S = 300  # A block that hangs fails; the blocks take seconds each.
# Pages that other changes add; links to them are not yet checked.
PENDING = ()


def blocks(page):
  """[(first line number, info after the language, code)] of the page's ```python blocks."""
  with open(os.path.join(ROOT, page), encoding='utf-8') as fh:
    lines = fh.read().splitlines()
  out, i = [], 0
  while i < len(lines):
    m = FENCE.match(lines[i].strip())
    if not m or not m.group(1):
      i += 1
      continue
    j = i + 1
    while j < len(lines) and lines[j].strip() != '```':
      j += 1
    if j == len(lines):
      raise ValueError(f'{page}:{i + 1}: a code block that is never closed')
    if m.group(1) == 'python':
      indent = len(lines[i]) - len(lines[i].lstrip())
      code = '\n'.join(line[indent:] for line in lines[i + 1:j])
      out.append((i + 1, m.group(2).strip(), code + '\n'))
    i = j + 1
  return out


def _cases():
  return [(f'{page.replace("/", "_").replace(".", "_")}_line{line}', page, line, info, code)
          for page in PAGES for line, info, code in blocks(page)]


CASES = _cases()
_CACHE = tempfile.mkdtemp(prefix='ddrm-docs-jax-cache-')


def tearDownModule():
  shutil.rmtree(_CACHE, ignore_errors=True)


class DocsTest(parameterized.TestCase):

  def test_every_page_has_examples_and_no_unknown_fence(self):
    self.assertGreater(len(CASES), 0)
    for _, page, line, info, _ in CASES:
      self.assertIn(info, ('', 'no-run'), f'{page}:{line}: unknown block info {info!r}')

  @parameterized.named_parameters(*[(name, page, line, info, code)
                                    for name, page, line, info, code in CASES])
  def test_block_runs(self, page, line, info, code):
    if info == 'no-run':
      self.assertRegex(code, r'ckpt|checkpoint',
                       f'{page}:{line}: a no-run block must name the checkpoint it needs')
      self.skipTest(f'{page}:{line}: no-run (needs a checkpoint that is not bundled)')
    env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS='cpu',
               JAX_COMPILATION_CACHE_DIR=_CACHE, JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS='0',
               JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES='0')
    with tempfile.TemporaryDirectory() as cwd:
      try:
        proc = subprocess.run([sys.executable, '-c', code], cwd=cwd, env=env,
                              capture_output=True, text=True, timeout=TIMEOUT_S)
      except subprocess.TimeoutExpired:
        self.fail(f'{page}:{line}: the example ran longer than {TIMEOUT_S} s')
    self.assertEqual(proc.returncode, 0,
                     f'{page}:{line}: the example fails as printed:\n{code}\n'
                     f'--- stderr (last lines):\n' + '\n'.join(proc.stderr.splitlines()[-25:]))

  def test_links_and_figures_exist(self):
    link = re.compile(r'\]\(([^)#\s]+)(#[^)\s]*)?\)')
    for page in PAGES:
      with open(os.path.join(ROOT, page), encoding='utf-8') as fh:
        text = fh.read()
      for target, _ in link.findall(text):
        if re.match(r'[a-z]+:', target):  # https:, mailto:
          continue
        path = os.path.normpath(os.path.join(os.path.dirname(page), target))
        if path in PENDING:
          continue
        self.assertTrue(os.path.exists(os.path.join(ROOT, path)),
                        f'{page}: the link {target} names no file')

  def test_readme_test_command_is_what_ci_runs(self):
    with open(os.path.join(ROOT, 'README.md'), encoding='utf-8') as fh:
      readme = fh.read()
    with open(os.path.join(ROOT, '.ci', 'run'), encoding='utf-8') as fh:
      ci = fh.read()
    command = next(line for line in readme.splitlines() if 'pytest' in line and '&&' in line)
    for part in command.split('&&')[1:]:  # After activating the venv: the installs, the tests.
      part = part.strip().replace('pip install', 'python -m pip install', 1) if (
          part.strip().startswith('pip ')) else part.strip()
      self.assertIn(part, ci, f'.ci/run does not run the README step {part!r}')


if __name__ == '__main__':
  absltest.main()
