"""Thin entry point: `python scripts/train.py --help` (same as the `ddrm-train` command)."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from ddrm_jax.cli import train  # pylint: disable=g-import-not-at-top,wrong-import-position

if __name__ == '__main__':
  train.run()
