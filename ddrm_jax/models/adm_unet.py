"""The guided-diffusion (ADM) UNet and its encoder classifier (Dhariwal & Nichol 2021).

DDRM uses these networks for ImageNet 256 (unconditional), 256 and 512 (class-conditional,
learned sigma) and for classifier guidance. Architecture facts that decide parity with the
PyTorch checkpoints: GroupNorm(32, eps 1e-5) computed in float32; SiLU; timestep embedding
[cos, sin] with frequencies exp(-log(10000) i / half); residual blocks with FiLM-like
scale-shift norm (h = norm(h) * (1 + scale) + shift) and optional up/down-sampling inside the
block (nearest 2x / 2x2 average pool applied after the first norm+SiLU, to both branches);
multi-head self-attention whose fused qkv projection is laid out per head ("legacy" order:
[q_h, k_h, v_h] for each head h) or per q/k/v ("new" order: [q_1..q_H, k_1..k_H, v_1..v_H]).

Layout: NHWC activations, HWIO conv kernels, (in, out) dense kernels, float32 params.
Convolutions and attention run in the compute dtype (`config.dtype`, e.g. bfloat16 on
accelerators); GroupNorm, softmax, the timestep MLP and the output head run in float32, as in
guided-diffusion's fp16 mode. Submodule names mirror the PyTorch state dict
(`input_blocks_4_1` is `input_blocks.4.1`, `in_layers_2` is `in_layers.2`).
"""

import dataclasses
import math
from typing import Any, Mapping, Optional, Tuple

import flax.linen as nn
import jax.numpy as jnp

from ddrm_jax.models import layers

Dtype = Any

NUM_GROUPS = 32
NORM_EPS = 1e-5
_DTYPES = ('float32', 'bfloat16', 'float16')
_POOLS = ('attention', 'adaptive')


def default_channel_mult(image_size: int) -> Tuple[float, ...]:
  """guided-diffusion's channel multipliers for a training resolution."""
  table = {512: (0.5, 1, 1, 2, 2, 4, 4), 256: (1, 1, 2, 2, 4, 4), 128: (1, 1, 2, 3, 4),
           64: (1, 2, 3, 4)}
  if image_size not in table:
    raise ValueError(f'no default channel_mult for image_size={image_size}; give one explicitly')
  return table[image_size]


def _number(m):
  m = float(m)
  return int(m) if m.is_integer() else m


class _EncoderFields:
  """Validation and (de)serialisation shared by ADMConfig and ClassifierConfig."""

  def _normalise_and_check(self, name):
    # Tuples from lists (JSON), so configs stay hashable and compare equal after a round trip.
    object.__setattr__(self, 'channel_mult', tuple(_number(m) for m in self.channel_mult))
    object.__setattr__(self, 'attention_resolutions',
                       tuple(int(r) for r in self.attention_resolutions))
    if self.dtype not in _DTYPES:
      raise ValueError(f'{name}: dtype must be one of {_DTYPES}, got {self.dtype!r}')
    if not self.channel_mult or min(self.channel_mult) <= 0:
      raise ValueError(f'{name}: channel_mult must be positive, got {self.channel_mult}')
    if self.num_res_blocks < 1:
      raise ValueError(f'{name}: num_res_blocks must be >= 1, got {self.num_res_blocks}')
    if not 0.0 <= self.dropout < 1.0:
      raise ValueError(f'{name}: dropout must be in [0, 1), got {self.dropout}')
    widths = [m * self.model_channels for m in self.channel_mult]
    bad = sorted({w for w in widths if not float(w).is_integer() or int(w) % NUM_GROUPS})
    if bad:
      raise ValueError(f'{name}: widths channel_mult * model_channels = {bad} must be integers '
                       f'divisible by {NUM_GROUPS} (GroupNorm groups)')
    reached = {self.image_size // 2 ** k for k in range(len(self.channel_mult))}
    if self.image_size % 2 ** (len(self.channel_mult) - 1):
      raise ValueError(f'{name}: image_size={self.image_size} not divisible by '
                       f'2**{len(self.channel_mult) - 1} (one halving per level)')
    missing = sorted(set(self.attention_resolutions) - reached)
    if missing:
      raise ValueError(f'{name}: attention_resolutions {missing} are not feature-map sizes of '
                       f'this network (image_size={self.image_size}: {sorted(reached)})')
    attended = {len(widths) - 1} | {k for k in range(len(widths))
                                    if self.image_size // 2 ** k in self.attention_resolutions}
    for k in sorted(attended):  # raises on widths the heads do not divide
      self.heads(int(widths[k]))
      self.heads(int(widths[k]), upsample=True)

  @property
  def widths(self) -> Tuple[int, ...]:
    """Channel count of each level: int(mult * model_channels)."""
    return tuple(int(m * self.model_channels) for m in self.channel_mult)

  @property
  def attention_ds(self) -> Tuple[int, ...]:
    """Attention as downsample rates (guided-diffusion's constructor argument)."""
    return tuple(self.image_size // r for r in self.attention_resolutions)

  def heads(self, width: int, upsample: bool = False) -> int:
    """Number of attention heads of a block of `width` channels."""
    if self.num_head_channels != -1:
      if self.num_head_channels <= 0 or width % self.num_head_channels:
        raise ValueError(f'{type(self).__name__}: width {width} not divisible by '
                         f'num_head_channels={self.num_head_channels}')
      return width // self.num_head_channels
    n = self.num_heads
    if upsample and getattr(self, 'num_heads_upsample', -1) != -1:
      n = self.num_heads_upsample
    if n <= 0 or width % n:
      raise ValueError(f'{type(self).__name__}: width {width} not divisible by {n} heads')
    return n

  def to_dict(self):
    d = dataclasses.asdict(self)
    d['channel_mult'] = list(self.channel_mult)
    d['attention_resolutions'] = list(self.attention_resolutions)
    return d

  @classmethod
  def from_dict(cls, d: Mapping[str, Any]):
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - names)
    if unknown:
      raise ValueError(f'{cls.__name__}: unknown fields {unknown}')
    return cls(**d)


@dataclasses.dataclass(frozen=True)
class ADMConfig(_EncoderFields):
  """Architecture of a guided-diffusion `UNetModel`.

  `attention_resolutions` are feature-map sizes in pixels for an `image_size` input (the
  `--attention_resolutions 32,16,8` flag), not downsample rates (see `attention_ds`).
  `out_channels` counts image channels: with `learn_sigma` the network outputs
  `2 * out_channels` (eps, then the variance interpolation). `num_head_channels != -1` fixes
  the channels per head and overrides `num_heads` / `num_heads_upsample` (-1: = num_heads).
  `num_classes=None` is unconditional. `dtype` is the compute dtype; params are float32.
  """
  image_size: int = 256
  in_channels: int = 3
  model_channels: int = 256
  out_channels: int = 3
  num_res_blocks: int = 2
  attention_resolutions: Tuple[int, ...] = (32, 16, 8)
  channel_mult: Tuple[float, ...] = (1, 1, 2, 2, 4, 4)
  num_heads: int = 4
  num_head_channels: int = 64
  num_heads_upsample: int = -1
  use_scale_shift_norm: bool = True
  resblock_updown: bool = True
  conv_resample: bool = True
  learn_sigma: bool = True
  num_classes: Optional[int] = None
  use_new_attention_order: bool = False
  dropout: float = 0.0
  dtype: str = 'float32'
  family: str = 'adm'

  def __post_init__(self):
    if self.family != 'adm':
      raise ValueError(f"ADMConfig: family must be 'adm', got {self.family!r}")
    if self.num_classes == 0:
      object.__setattr__(self, 'num_classes', None)
    if self.num_classes is not None and self.num_classes < 1:
      raise ValueError(f'ADMConfig: num_classes must be None or >= 1, got {self.num_classes}')
    self._normalise_and_check('ADMConfig')

  @property
  def num_outputs(self) -> int:
    return self.out_channels * (2 if self.learn_sigma else 1)

  def module(self, dtype: Optional[Dtype] = None) -> 'ADMUNet':
    """The Linen module; `dtype` (compute) defaults to `self.dtype`."""
    return ADMUNet(self, dtype)

  @classmethod
  def from_flags(cls, flags: Mapping[str, Any], *, defaults: str = 'create_model',
                 **overrides) -> 'ADMConfig':
    """From guided-diffusion's `create_model` flags (DDRM's YAML `model` section, DPS's
    model_config.yaml, or a MODEL_FLAGS string's values with `defaults='script'`).

    Values are read as guided-diffusion reads them (str2bool: 'False' is False; channel_mult ''
    is the default for the size; attention_resolutions in pixels); keys that do not change the
    network (use_fp16, var_type, ...) are ignored, unknown keys and a non-linear noise_schedule
    raise a ValueError naming them (`configs.guided_diffusion_kwargs`). `overrides` replace
    config fields.
    """
    from ddrm_jax.models import configs  # pylint: disable=g-import-not-at-top
    kw, _ = configs.guided_diffusion_kwargs(flags, defaults=defaults)
    kw.update(overrides)
    return cls(**kw)


@dataclasses.dataclass(frozen=True)
class ClassifierConfig(_EncoderFields):
  """Architecture of a guided-diffusion `EncoderUNetModel` (noisy-image classifier).

  The encoder half of the ADM UNet followed by GroupNorm, SiLU and a pooling head:
  'attention' (CLIP-style attention pooling, `num_head_channels` per head, the paper's
  classifiers) or 'adaptive' (global average + 1x1 conv). `attention_resolutions` are
  feature-map sizes in pixels, as in `ADMConfig`. `out_channels` is the number of classes.
  """
  image_size: int = 256
  in_channels: int = 3
  model_channels: int = 128
  out_channels: int = 1000
  num_res_blocks: int = 2
  attention_resolutions: Tuple[int, ...] = (32, 16, 8)
  channel_mult: Tuple[float, ...] = (1, 1, 2, 2, 4, 4)
  num_heads: int = 1
  num_head_channels: int = 64
  use_scale_shift_norm: bool = True
  resblock_updown: bool = True
  conv_resample: bool = True
  use_new_attention_order: bool = False
  pool: str = 'attention'
  dropout: float = 0.0
  dtype: str = 'float32'
  family: str = 'adm_classifier'

  def __post_init__(self):
    if self.family != 'adm_classifier':
      raise ValueError(f"ClassifierConfig: family must be 'adm_classifier', got {self.family!r}")
    if self.pool not in _POOLS:
      raise ValueError(f'ClassifierConfig: pool must be one of {_POOLS}, got {self.pool!r}')
    if self.pool == 'attention' and self.num_head_channels == -1:
      raise ValueError("ClassifierConfig: pool='attention' needs num_head_channels != -1")
    self._normalise_and_check('ClassifierConfig')

  def module(self, dtype: Optional[Dtype] = None) -> 'ADMClassifier':
    """The Linen module; `dtype` (compute) defaults to `self.dtype`."""
    return ADMClassifier(self, dtype)

  @property
  def pool_size(self) -> int:
    """Spatial size of the feature map entering the pooling head."""
    return self.image_size // 2 ** (len(self.channel_mult) - 1)

  @classmethod
  def from_flags(cls, flags: Mapping[str, Any], *, defaults: str = 'create_model',
                 **overrides) -> 'ClassifierConfig':
    """From guided-diffusion's `create_classifier` flags (DDRM's YAML `classifier` section, or a
    CLASSIFIER_FLAGS string's values with `defaults='script'`): image_size, classifier_width,
    classifier_depth, classifier_attention_resolutions, classifier_use_scale_shift_norm,
    classifier_resblock_updown, classifier_pool (64 channels per head, 1000 classes, channel_mult
    by image size, as `create_classifier`), read as `ADMConfig.from_flags` reads its flags.
    """
    from ddrm_jax.models import configs  # pylint: disable=g-import-not-at-top
    kw, _ = configs.guided_diffusion_kwargs(flags, classifier=True, defaults=defaults)
    kw.update(overrides)
    return cls(**kw)


# The paper's checkpoints (256x256_diffusion_uncond.pt, 256x256_diffusion.pt,
# 512x512_diffusion.pt, 256x256_classifier.pt, 512x512_classifier.pt). All float32 compute;
# use dataclasses.replace(config, dtype='bfloat16') on accelerators.
ADM_CONFIGS = {
    'imagenet_256': ADMConfig(),
    'imagenet_256_cc': ADMConfig(num_classes=1000),
    'imagenet_512_cc': ADMConfig(image_size=512, channel_mult=default_channel_mult(512),
                                 num_classes=1000),
    'classifier_256': ClassifierConfig(),
    'classifier_512': ClassifierConfig(image_size=512, channel_mult=default_channel_mult(512)),
}


def _compute_dtype(config, override):
  return jnp.dtype(override if override is not None else config.dtype)


def _norm(dtype, name):
  return layers.GroupNorm(NUM_GROUPS, NORM_EPS, dtype=dtype, name=name)


def qkv_attention(qkv, num_heads: int, new_order: bool):
  """Multi-head attention on fused projections qkv (B, T, 3 * C) -> (B, T, C).

  Legacy order: channel (h, j, c) of head h, j in (q, k, v); new order: (j, h, c). q and k
  are each scaled by ch**-1/4 before the product (as guided-diffusion); softmax in float32
  (`layers.attention`: cuDNN's fused attention on GPUs in 16-bit compute).
  """
  b, t, width = qkv.shape
  ch = width // (3 * num_heads)
  if new_order:
    q, k, v = (qkv.reshape(b, t, 3, num_heads, ch)[:, :, j] for j in range(3))
  else:
    q, k, v = (qkv.reshape(b, t, num_heads, 3, ch)[:, :, :, j] for j in range(3))
  scale = 1.0 / math.sqrt(math.sqrt(ch))
  h = layers.attention(q * scale, k * scale, v, scale=1.0)
  return h.reshape(b, t, num_heads * ch)


class ResBlock(nn.Module):
  """in: norm-SiLU-[up/down]-conv; + emb (added, or scale-shift of the 2nd norm); out:
  norm-SiLU-dropout-conv; + skip (identity, or 1x1 conv when the width changes)."""
  out_channels: int
  use_scale_shift_norm: bool
  dropout: float = 0.0
  up: bool = False
  down: bool = False
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, emb, train: bool = False):
    dt, c = self.dtype, self.out_channels
    h = layers.swish(_norm(dt, 'in_layers_0')(x))
    if self.up:
      h, x = layers.upsample_nearest_2x(h), layers.upsample_nearest_2x(x)
    elif self.down:
      h, x = layers.avg_pool_2x(h), layers.avg_pool_2x(x)
    h = layers.conv(c, 3, dtype=dt, name='in_layers_2')(h)
    emb_out = layers.dense(2 * c if self.use_scale_shift_norm else c, dtype=jnp.float32,
                           name='emb_layers_1')(layers.swish(emb))
    emb_out = emb_out.astype(dt)[:, None, None, :]
    if self.use_scale_shift_norm:
      scale, shift = jnp.split(emb_out, 2, axis=-1)
      h = _norm(dt, 'out_layers_0')(h) * (1 + scale) + shift
    else:
      h = _norm(dt, 'out_layers_0')(h + emb_out)
    h = nn.Dropout(self.dropout, deterministic=not train)(layers.swish(h))
    h = layers.conv(c, 3, dtype=dt, kernel_init=nn.initializers.zeros, name='out_layers_3')(h)
    if x.shape[-1] != c:
      x = layers.conv(c, 1, dtype=dt, name='skip_connection')(x)
    return x + h


class AttentionBlock(nn.Module):
  """Self-attention over all H*W positions: norm, fused 1x1 qkv, attention, proj_out; residual."""
  num_heads: int
  new_order: bool = False
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    b, hh, ww, c = x.shape
    h = _norm(self.dtype, 'norm')(x).reshape(b, hh * ww, c)
    qkv = layers.dense(3 * c, dtype=self.dtype, name='qkv')(h)
    h = qkv_attention(qkv, self.num_heads, self.new_order)
    h = layers.dense(c, dtype=self.dtype, kernel_init=nn.initializers.zeros, name='proj_out')(h)
    return x + h.reshape(b, hh, ww, c)


class Downsample(nn.Module):
  """Stride-2 3x3 conv (padding 1, params under `op`) or 2x2 average pool (no resblock_updown)."""
  use_conv: bool
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    if not self.use_conv:
      return layers.avg_pool_2x(x)
    return layers.conv(x.shape[-1], 3, stride=2, dtype=self.dtype, name='op')(x)


class AttentionPool2d(nn.Module):
  """CLIP-style attention pooling: prepend the spatial mean, add a learned positional
  embedding (T + 1, C), multi-head attention (new qkv order), project; the mean's token."""
  spatial: int
  num_head_channels: int
  out_channels: int

  @nn.compact
  def __call__(self, x):
    b, hh, ww, c = x.shape
    x = x.reshape(b, hh * ww, c)
    x = jnp.concatenate([jnp.mean(x, axis=1, keepdims=True), x], axis=1)
    pos = self.param('positional_embedding', nn.initializers.normal(c ** -0.5),
                     (self.spatial ** 2 + 1, c), layers.PARAM_DTYPE)
    qkv = layers.dense(3 * c, name='qkv_proj')(x + pos)
    h = qkv_attention(qkv, c // self.num_head_channels, new_order=True)
    return layers.dense(self.out_channels, name='c_proj')(h)[:, 0]


def _check_x_t(name, cfg, x, t, exact_size=False):
  if x.ndim != 4 or x.shape[-1] != cfg.in_channels:
    raise ValueError(f'{name}: x must be (B, H, W, {cfg.in_channels}), got {x.shape}')
  f = 2 ** (len(cfg.channel_mult) - 1)
  if exact_size and x.shape[1:3] != (cfg.image_size, cfg.image_size):
    raise ValueError(f'{name}: x must be {cfg.image_size}x{cfg.image_size} (attention pooling '
                     f'has a fixed positional embedding), got {x.shape[1:3]}')
  if x.shape[1] % f or x.shape[2] % f:
    raise ValueError(f'{name}: H and W must be multiples of {f}, got {x.shape[1:3]}')
  if t.shape != (x.shape[0],):
    raise ValueError(f'{name}: t must have shape ({x.shape[0]},), got {t.shape}')


def _encoder(cfg, dt, h, emb, train):
  """Input blocks of the UNet / classifier; returns the skip activations (last = output)."""
  blk = lambda c, name, down=False: ResBlock(c, cfg.use_scale_shift_norm, cfg.dropout,
                                             down=down, dtype=dt, name=name)
  attn = lambda c, name: AttentionBlock(cfg.heads(c), cfg.use_new_attention_order, dt, name=name)
  attention_ds = cfg.attention_ds
  hs = [layers.conv(cfg.widths[0], 3, dtype=dt, name='input_blocks_0_0')(h)]
  i, ds = 1, 1
  for level, c in enumerate(cfg.widths):
    for _ in range(cfg.num_res_blocks):
      h = blk(c, f'input_blocks_{i}_0')(hs[-1], emb, train)
      if ds in attention_ds:
        h = attn(c, f'input_blocks_{i}_1')(h)
      hs.append(h)
      i += 1
    if level != len(cfg.widths) - 1:
      if cfg.resblock_updown:
        h = blk(c, f'input_blocks_{i}_0', down=True)(hs[-1], emb, train)
      else:
        h = Downsample(cfg.conv_resample, dt, name=f'input_blocks_{i}_0')(hs[-1])
      hs.append(h)
      i += 1
      ds *= 2
  return hs


def _middle(cfg, dt, h, emb, train):
  c = h.shape[-1]
  h = ResBlock(c, cfg.use_scale_shift_norm, cfg.dropout, dtype=dt,
               name='middle_block_0')(h, emb, train)
  h = AttentionBlock(cfg.heads(c), cfg.use_new_attention_order, dt, name='middle_block_1')(h)
  return ResBlock(c, cfg.use_scale_shift_norm, cfg.dropout, dtype=dt,
                  name='middle_block_2')(h, emb, train)


def _time_embed(cfg, t):
  """Timestep MLP in float32: Linear(C, 4C)-SiLU-Linear(4C, 4C) of the [cos, sin] embedding."""
  emb = layers.timestep_embedding(t, cfg.model_channels, order='cos_sin', freq_shift=0)
  emb = layers.dense(4 * cfg.model_channels, name='time_embed_0')(emb)
  return layers.dense(4 * cfg.model_channels, name='time_embed_2')(layers.swish(emb))


class ADMUNet(nn.Module):
  """guided-diffusion UNet: `(x (B, H, W, C) in [-1, 1], t (B,), labels (B,) int if
  class-conditional) -> (B, H, W, num_outputs)` float32 (eps, then the variance channels when
  `learn_sigma`). `dtype` overrides `config.dtype` (the compute dtype)."""
  config: ADMConfig
  dtype: Optional[Dtype] = None

  def _check_inputs(self, x, t, labels):
    cfg = self.config
    _check_x_t('ADMUNet', cfg, x, t)
    if cfg.num_classes is None and labels is not None:
      raise ValueError('ADMUNet: labels given to an unconditional model (num_classes=None)')
    if cfg.num_classes is not None:
      if labels is None:
        raise ValueError(f'ADMUNet: class-conditional model (num_classes={cfg.num_classes}) '
                         'needs labels')
      if labels.shape != (x.shape[0],) or not jnp.issubdtype(labels.dtype, jnp.integer):
        raise ValueError(f'ADMUNet: labels must be int of shape ({x.shape[0]},), got '
                         f'{labels.dtype}{labels.shape}')

  @nn.compact
  def __call__(self, x, t, labels=None, train: bool = False):
    cfg = self.config
    dt = _compute_dtype(cfg, self.dtype)
    x, t = jnp.asarray(x), jnp.asarray(t)
    labels = None if labels is None else jnp.asarray(labels)
    self._check_inputs(x, t, labels)

    emb = _time_embed(cfg, t)
    if cfg.num_classes is not None:
      emb = emb + nn.Embed(cfg.num_classes, 4 * cfg.model_channels, dtype=jnp.float32,
                           param_dtype=layers.PARAM_DTYPE, name='label_emb')(labels)

    hs = _encoder(cfg, dt, x.astype(dt), emb, train)
    h = _middle(cfg, dt, hs[-1], emb, train)

    attention_ds = cfg.attention_ds
    i, ds = 0, 2 ** (len(cfg.widths) - 1)
    for level in reversed(range(len(cfg.widths))):
      c = cfg.widths[level]
      for j in range(cfg.num_res_blocks + 1):
        h = jnp.concatenate([h, hs.pop()], axis=-1)
        h = ResBlock(c, cfg.use_scale_shift_norm, cfg.dropout, dtype=dt,
                     name=f'output_blocks_{i}_0')(h, emb, train)
        k = 1
        if ds in attention_ds:
          h = AttentionBlock(cfg.heads(c, upsample=True), cfg.use_new_attention_order, dt,
                             name=f'output_blocks_{i}_{k}')(h)
          k += 1
        if level and j == cfg.num_res_blocks:
          name = f'output_blocks_{i}_{k}'
          if cfg.resblock_updown:
            h = ResBlock(c, cfg.use_scale_shift_norm, cfg.dropout, up=True, dtype=dt,
                         name=name)(h, emb, train)
          else:
            h = layers.Upsample(cfg.conv_resample, dt, name=name)(h)
          ds //= 2
        i += 1

    h = layers.swish(_norm(jnp.float32, 'out_0')(h.astype(jnp.float32)))
    return layers.conv(cfg.num_outputs, 3, kernel_init=nn.initializers.zeros, name='out_2')(h)


class ADMClassifier(nn.Module):
  """guided-diffusion encoder classifier: `(x (B, image_size, image_size, C) in [-1, 1],
  t (B,)) -> logits (B, out_channels)` float32. `dtype` overrides `config.dtype`."""
  config: ClassifierConfig
  dtype: Optional[Dtype] = None

  @nn.compact
  def __call__(self, x, t, train: bool = False):
    cfg = self.config
    dt = _compute_dtype(cfg, self.dtype)
    x, t = jnp.asarray(x), jnp.asarray(t)
    _check_x_t('ADMClassifier', cfg, x, t, exact_size=cfg.pool == 'attention')
    emb = _time_embed(cfg, t)
    h = _encoder(cfg, dt, x.astype(dt), emb, train)[-1]
    h = _middle(cfg, dt, h, emb, train)
    h = layers.swish(_norm(jnp.float32, 'out_0')(h.astype(jnp.float32)))
    if cfg.pool == 'attention':
      return AttentionPool2d(cfg.pool_size, cfg.num_head_channels, cfg.out_channels,
                             name='out_2')(h)
    h = jnp.mean(h, axis=(1, 2), keepdims=True)
    h = layers.conv(cfg.out_channels, 1, kernel_init=nn.initializers.zeros, name='out_3')(h)
    return h[:, 0, 0, :]
