"""Layout transforms from PyTorch tensors to Flax params (numpy in, float32 numpy out).

Each transform maps a torch tensor to the Flax layout and states the torch shape it expects for a
given Flax shape (`torch_shape`), so the converter can name a mismatch before transforming.
"""

import numpy as np


def _identity(w):
  return w


def _conv(w):  # (O, I, H, W) -> (H, W, I, O)
  return np.transpose(w, (2, 3, 1, 0))


def _conv1d(w):  # (O, I, K) -> (K, I, O)
  return np.transpose(w, (2, 1, 0))


def _linear(w):  # (out, in) -> (in, out)
  return np.transpose(w, (1, 0))


def _conv1d_to_dense(w):  # (O, I, 1) -> (I, O)
  return np.transpose(w[:, :, 0], (1, 0))


def _conv_to_dense(w):  # (O, I, 1, 1) -> (I, O)
  return np.transpose(w[:, :, 0, 0], (1, 0))


def _linear_to_conv1x1(w):  # (O, I) -> (1, 1, I, O): a Linear over channels is a 1x1 conv
  return np.transpose(w, (1, 0))[None, None]


# name -> (function, torch ndim, flax shape -> torch shape)
_TRANSFORMS = {
    'identity': (_identity, None, lambda s: tuple(s)),
    'conv': (_conv, 4, lambda s: (s[3], s[2], s[0], s[1])),
    'conv1d': (_conv1d, 3, lambda s: (s[2], s[1], s[0])),
    'linear': (_linear, 2, lambda s: (s[1], s[0])),
    'transpose': (_linear, 2, lambda s: (s[1], s[0])),  # a plain 2-D array stored transposed
    'conv1d_to_dense': (_conv1d_to_dense, 3, lambda s: (s[1], s[0], 1)),
    'conv_to_dense': (_conv_to_dense, 4, lambda s: (s[1], s[0], 1, 1)),
    'linear_to_conv1x1': (_linear_to_conv1x1, 2, lambda s: (s[3], s[2])),
}

NAMES = tuple(sorted(_TRANSFORMS))


def _get(name):
  if name not in _TRANSFORMS:
    raise ValueError(f'unknown transform {name!r}; known: {", ".join(NAMES)}')
  return _TRANSFORMS[name]


def torch_shape(name, flax_shape):
  """The torch tensor shape that transform `name` turns into `flax_shape`."""
  return tuple(int(d) for d in _get(name)[2](tuple(flax_shape)))


def apply(name, tensor):
  """Transform a torch-layout numpy array into the Flax layout, as float32."""
  fn, ndim, _ = _get(name)
  tensor = np.asarray(tensor)
  if ndim is not None and tensor.ndim != ndim:
    raise ValueError(f'transform {name!r} expects a {ndim}-d tensor, got shape {tensor.shape}')
  return np.ascontiguousarray(fn(tensor), dtype=np.float32)
