"""SVD operators of the paper's degradations (Appendix D).

`make(deg, image_shape, **options)` builds any reference degradation by name; the constructors
below build operators from user data. Every operator is an immutable pytree acting on one image
(H, W, C): `Vt`, `V`, `Ut`, `U`, `singulars`, and the derived `H`, `Ht`, `H_pinv`.
"""

from ddrm_jax.operators.base import DEFAULT_ZERO_THRESHOLD
from ddrm_jax.operators.base import Operator
from ddrm_jax.operators.circular import CircularBlur
from ddrm_jax.operators.circular import border_padding
from ddrm_jax.operators.circular import circular_blur
from ddrm_jax.operators.circular import crop_padding
from ddrm_jax.operators.circular import disk_kernel
from ddrm_jax.operators.circular import motion_kernel
from ddrm_jax.operators.circular import reflect_extension
from ddrm_jax.operators.colorization import Colorization
from ddrm_jax.operators.colorization import grayscale
from ddrm_jax.operators.cs import CompressedSensing
from ddrm_jax.operators.cs import compressed_sensing
from ddrm_jax.operators.cs import fwht
from ddrm_jax.operators.dense import Dense
from ddrm_jax.operators.dense import from_matrix
from ddrm_jax.operators.identity import Identity
from ddrm_jax.operators.identity import denoising
from ddrm_jax.operators.inpainting import Inpainting
from ddrm_jax.operators.inpainting import from_mask
from ddrm_jax.operators.inpainting import random_mask
from ddrm_jax.operators.registry import NAMES
from ddrm_jax.operators.registry import load_text_mask
from ddrm_jax.operators.registry import make
from ddrm_jax.operators.separable import Separable
from ddrm_jax.operators.separable import bicubic_kernel
from ddrm_jax.operators.separable import bicubic_superres
from ddrm_jax.operators.separable import conv_matrix
from ddrm_jax.operators.separable import gaussian_kernel
from ddrm_jax.operators.separable import from_matrices
from ddrm_jax.operators.separable import separable_blur
from ddrm_jax.operators.separable import strided_separable_conv
from ddrm_jax.operators.superres import BlockSuperRes
from ddrm_jax.operators.superres import block_superres
