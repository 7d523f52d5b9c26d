"""`make(deg, image_shape, **options)`: the paper's degradations by their reference names."""

import importlib.resources

import numpy as np

from ddrm_jax.operators import base
from ddrm_jax.operators import circular
from ddrm_jax.operators import colorization
from ddrm_jax.operators import cs
from ddrm_jax.operators import identity
from ddrm_jax.operators import inpainting
from ddrm_jax.operators import separable
from ddrm_jax.operators import superres

_TEXT_MASKS = {'inp_lolcat': 'lolcat_extra.npy', 'inp_lorem': 'lorem3.npy'}
_BLUR_KERNELS = {
    # (vertical, horizontal) taps; every tap is used (reference defect 2 not copied).
    'deblur_uni': lambda: (np.full(9, 1 / 9), np.full(9, 1 / 9)),
    'deblur_gauss': lambda: (separable.gaussian_kernel(10.0, 5),) * 2,
    'deblur_aniso': lambda: (separable.gaussian_kernel(1.0, 9), separable.gaussian_kernel(20.0, 9)),
}


def load_text_mask(name):
  """The paper's 256x256 text mask (1 = kept) for 'inp_lolcat' or 'inp_lorem', float32."""
  ref = importlib.resources.files('ddrm_jax').joinpath('assets', 'masks', _TEXT_MASKS[name])
  with ref.open('rb') as f:
    return np.load(f).astype(np.float32)


def _deno(shape):
  return identity.denoising(shape)


def _inp(shape, mask=None, key=None):
  if mask is not None and key is not None:
    raise ValueError("inp: give either mask= or key=, not both")
  if mask is None:
    mask = inpainting.random_mask(shape[0], shape[1], key)
  elif np.shape(mask) != shape[:2]:
    raise ValueError(f'inp: mask must have shape (H, W) = {shape[:2]}, got {np.shape(mask)}')
  return inpainting.from_mask(mask, shape[2])


def _text_inp(name):
  def build(shape):
    mask = load_text_mask(name)
    if mask.shape != shape[:2]:
      raise ValueError(f'{name}: the text mask is {mask.shape[0]}x{mask.shape[1]}, image_shape '
                       f'{shape} must have that height and width')
    return inpainting.from_mask(mask, shape[2])
  return build


def _sr(factor):
  return lambda shape: superres.block_superres(shape, factor)


def _sr_bicubic(factor):
  def build(shape, zero_threshold=base.DEFAULT_ZERO_THRESHOLD):
    return separable.bicubic_superres(shape, factor, zero_threshold)
  return build


def _deblur(name):
  def build(shape, zero_threshold=base.DEFAULT_ZERO_THRESHOLD):
    k_v, k_h = _BLUR_KERNELS[name]()
    return separable.separable_blur(k_v, k_h, shape, zero_threshold)
  return build


MOTION_SEED = 0  # deblur_motion's camera-shake kernel, and blur2d's default one.
BLUR2D_DEFAULT_SIZE = 7


def motion_kernel_size(shape):
  """deblur_motion's kernel size: about 1/16 of the shorter side, odd, at least 5."""
  return max(5, 2 * (min(shape[0], shape[1]) // 32) + 1)


def _blur2d(shape, kernel=None, kernel_normalize=True, zero_threshold=base.DEFAULT_ZERO_THRESHOLD):
  if not isinstance(kernel_normalize, (bool, np.bool_)):
    raise ValueError(f'blur2d: kernel_normalize must be True or False, got {kernel_normalize!r}')
  if kernel is None:  # Sums to 1 already: used as built.
    return circular.circular_blur(circular.motion_kernel(MOTION_SEED, BLUR2D_DEFAULT_SIZE), shape,
                                  zero_threshold)
  return circular.circular_blur(kernel, shape, zero_threshold, normalize=bool(kernel_normalize))


def _deblur_motion(shape, kernel_size=None, zero_threshold=base.DEFAULT_ZERO_THRESHOLD):
  size = motion_kernel_size(shape) if kernel_size is None else kernel_size
  if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 1:
    raise ValueError(f'deblur_motion: kernel_size must be a positive int, got {size!r}')
  return circular.circular_blur(circular.motion_kernel(MOTION_SEED, int(size)), shape,
                                zero_threshold)


def _color(shape):
  return colorization.grayscale(shape)


def _cs(ratio):
  def build(shape, perm=None, key=None):
    return cs.compressed_sensing(shape, ratio, perm=perm, key=key)
  return build


# name -> (builder(shape, **options), allowed option names).
_REGISTRY = {
    'deno': (_deno, ()),
    'inp': (_inp, ('mask', 'key')),
    'inp_lolcat': (_text_inp('inp_lolcat'), ()),
    'inp_lorem': (_text_inp('inp_lorem'), ()),
    **{f'sr{r}': (_sr(r), ()) for r in (2, 4, 8, 16)},
    **{f'sr_bicubic{r}': (_sr_bicubic(r), ('zero_threshold',)) for r in (4, 8, 16)},
    **{name: (_deblur(name), ('zero_threshold',)) for name in _BLUR_KERNELS},
    'deblur_motion': (_deblur_motion, ('kernel_size', 'zero_threshold')),
    'blur2d': (_blur2d, ('kernel', 'kernel_normalize', 'zero_threshold')),
    'color': (_color, ()),
    'cs2': (_cs(2), ('perm', 'key')),
    'cs4': (_cs(4), ('perm', 'key')),
}

NAMES = tuple(_REGISTRY)


def make(deg, image_shape, **options):
  """Builds degradation `deg` (a reference `--deg` name, see NAMES) for images (H, W, C).

  Options: inp: mask= ((H, W), 1 = kept) or key= (int seed or PRNG key, default 0);
  sr_bicubic*, deblur_*, blur2d: zero_threshold= (default 3e-2); cs2/cs4: perm= or key= (default
  0); blur2d: kernel= ((kh, kw) or per channel (kh, kw, C), circular; default a seeded 7x7
  camera-shake kernel; non-negative taps with a positive sum) and kernel_normalize= (default
  True: the kernel is divided by its sum; False: used as given, and must sum to 1 within
  `base.KERNEL_SUM_TOLERANCE`); deblur_motion: kernel_size= (default `motion_kernel_size`, a seeded
  camera-shake kernel, circular).
  """
  if deg not in _REGISTRY:
    raise ValueError(f'unknown degradation {deg!r}; known: {", ".join(NAMES)}')
  shape = base.as_shape(image_shape)
  build, allowed = _REGISTRY[deg]
  unknown = sorted(set(options) - set(allowed))
  if unknown:
    raise ValueError(f'{deg}: unknown option(s) {unknown}; allowed: {list(allowed) or "none"}')
  return build(shape, **options)
