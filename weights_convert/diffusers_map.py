"""diffusers `UNet2DModel` folders -> the DDPM UNet: config, state-dict names, noise schedule.

google/ddpm-* (celebahq-256, ema-church/bedroom/cat-256, cifar10-32) are the DDPM "simple" UNet in
diffusers' layout. `ddpm_config(d)` reads a diffusers `config.json` into a `DDPMConfig` and refuses,
in one line naming the field and its value, every setting our network does not compute;
`name_map(config)` maps Flax params onto diffusers' keys; `normalise_keys` renames the old
attention spellings (`query/key/value/proj_attn`) to the new ones (`to_q/to_k/to_v/to_out.0`);
`check_scheduler(d)` accepts only the linear training schedule the sampler uses.
"""

import math

from ddrm_jax.models.ddpm_unet import DDPMConfig
from weights_convert import ddpm_map

# UNet2DModel's constructor defaults (diffusers 0.42): a field absent from config.json has them.
DEFAULTS = {
    'sample_size': None, 'in_channels': 3, 'out_channels': 3, 'center_input_sample': False,
    'time_embedding_type': 'positional', 'time_embedding_dim': None, 'freq_shift': 0,
    'flip_sin_to_cos': True,
    'down_block_types': ('DownBlock2D', 'AttnDownBlock2D', 'AttnDownBlock2D', 'AttnDownBlock2D'),
    'mid_block_type': 'UNetMidBlock2D',
    'up_block_types': ('AttnUpBlock2D', 'AttnUpBlock2D', 'AttnUpBlock2D', 'UpBlock2D'),
    'block_out_channels': (224, 448, 672, 896), 'layers_per_block': 2,
    'mid_block_scale_factor': 1, 'downsample_padding': 1, 'downsample_type': 'conv',
    'upsample_type': 'conv', 'dropout': 0.0, 'act_fn': 'silu', 'attention_head_dim': 8,
    'norm_num_groups': 32, 'attn_norm_num_groups': None, 'norm_eps': 1e-5,
    'resnet_time_scale_shift': 'default', 'add_attention': True, 'class_embed_type': None,
    'num_class_embeds': None, 'num_train_timesteps': None,
}
METADATA = ('_class_name', '_diffusers_version', '_name_or_path', '_use_default_values')
# Settings that must have one value: (value, what our network computes instead).
_FIXED = {
    'center_input_sample': (False, 'inputs are used as given, in [-1, 1]'),
    'time_embedding_type': ('positional', 'the sinusoidal timestep embedding'),
    'flip_sin_to_cos': (False, 'the embedding is [sin, cos] (the original DDPM order)'),
    'freq_shift': (1, 'frequencies are exp(-log(10000) i / (half - 1)) (freq_shift=1)'),
    'mid_block_type': ('UNetMidBlock2D', 'a middle block of resnet, attention, resnet'),
    'mid_block_scale_factor': (1, 'residuals are not rescaled'),
    'downsample_padding': (0, 'downsampling pads 0 left/top and 1 right/bottom, then a stride-2 '
                           'conv (downsample_padding=0)'),
    'downsample_type': ('conv', 'downsampling by a stride-2 conv'),
    'upsample_type': ('conv', 'nearest 2x upsampling and a conv'),
    'resnet_time_scale_shift': ('default', 'the timestep embedding is added (no scale-shift)'),
    'add_attention': (True, 'the middle block has attention'),
    'class_embed_type': (None, 'the network is unconditional'),
    'num_class_embeds': (None, 'the network is unconditional'),
}
_DOWN = ('DownBlock2D', 'AttnDownBlock2D')
_UP = ('UpBlock2D', 'AttnUpBlock2D')
# Old diffusers attention names (google/ddpm-* .bin files) -> the current ones.
OLD_ATTENTION_NAMES = {'query': 'to_q', 'key': 'to_k', 'value': 'to_v', 'proj_attn': 'to_out.0'}


def _refuse(field, value, why):
  raise ValueError(f'diffusers config {field}={value!r}: {why}')


def ddpm_config(d):
  """The `DDPMConfig` of diffusers `UNet2DModel` config dict `d`; ValueError naming a field we
  cannot express (unknown fields included), with diffusers' defaults for absent ones."""
  if not isinstance(d, dict):
    raise ValueError(f'diffusers config must be a JSON object, got {type(d).__name__}')
  name = d.get('_class_name', 'UNet2DModel')
  if name != 'UNet2DModel':
    _refuse('_class_name', name, 'only UNet2DModel (the DDPM UNet) converts')
  unknown = sorted(set(d) - set(DEFAULTS) - set(METADATA))
  if unknown:
    raise ValueError(f'diffusers config has fields UNet2DModel does not know: {unknown}')
  c = dict(DEFAULTS, **{k: v for k, v in d.items() if k not in METADATA})
  for field, (want, ours) in _FIXED.items():
    if c[field] != want or isinstance(c[field], bool) != isinstance(want, bool):
      _refuse(field, c[field], f'our DDPM UNet needs {want!r} ({ours})')
  if c['act_fn'] not in ('silu', 'swish'):
    _refuse('act_fn', c['act_fn'], "our DDPM UNet uses swish (act_fn='silu')")

  size = c['sample_size']
  if isinstance(size, (list, tuple)) and len(size) == 2 and size[0] == size[1]:
    size = size[0]
  if not isinstance(size, int) or isinstance(size, bool) or size < 1:
    _refuse('sample_size', c['sample_size'], 'expected the square training resolution (an int)')
  widths = c['block_out_channels']
  if (not isinstance(widths, (list, tuple)) or not widths
      or not all(isinstance(w, int) and w > 0 for w in widths)):
    _refuse('block_out_channels', widths, 'expected positive integers')
  ch = widths[0]
  if any(w % ch for w in widths):
    _refuse('block_out_channels', widths, f'our DDPM UNet needs multiples of the first ({ch})')
  levels = len(widths)
  down, up = list(c['down_block_types']), list(c['up_block_types'])
  for field, types, known in (('down_block_types', down, _DOWN), ('up_block_types', up, _UP)):
    other = [t for t in types if t not in known]
    if other:
      _refuse(field, types, f'{other[0]} is not a block of our DDPM UNet ({" or ".join(known)})')
    if len(types) != levels:
      _refuse(field, types, f'expected {levels} blocks, one per block_out_channels entry')
  attended = [t == 'AttnDownBlock2D' for t in down]
  if [t == 'AttnUpBlock2D' for t in reversed(up)] != attended:
    _refuse('up_block_types', up, 'our DDPM UNet attends at the same resolutions on the way up '
            'as on the way down (down_block_types reversed)')
  head_dim = c['attention_head_dim']
  if head_dim is not None:
    attn_widths = sorted({w for w, a in zip(widths, attended) if a} | {widths[-1]})
    if any(head_dim != w for w in attn_widths):
      _refuse('attention_head_dim', head_dim, f'gives {attn_widths[-1] // head_dim} heads of '
              f'{head_dim} channels; our DDPM UNet has single-head attention (attention_head_dim '
              f'null, or the block width {attn_widths})')
  if c['time_embedding_dim'] not in (None, 4 * ch):
    _refuse('time_embedding_dim', c['time_embedding_dim'],
            f'our DDPM UNet embeds time in 4 * {ch} = {4 * ch} channels')
  groups = c['norm_num_groups']
  if not isinstance(groups, int) or isinstance(groups, bool):
    _refuse('norm_num_groups', groups, 'expected an integer number of GroupNorm groups')
  if groups < 1 or any(w % groups for w in widths):
    _refuse('norm_num_groups', groups, f'does not divide the widths {list(widths)}')
  if c['attn_norm_num_groups'] not in (None, groups):
    _refuse('attn_norm_num_groups', c['attn_norm_num_groups'],
            f'our DDPM UNet normalises attention inputs with norm_num_groups={groups} groups')
  if c['num_train_timesteps'] not in (None, 1000):
    _refuse('num_train_timesteps', c['num_train_timesteps'], 'the sampler uses 1000 timesteps')
  layers = c['layers_per_block']
  if not isinstance(layers, int) or isinstance(layers, bool):
    _refuse('layers_per_block', layers, 'expected one integer for every level')
  try:
    return DDPMConfig(
        image_size=size, in_channels=c['in_channels'], out_ch=c['out_channels'], ch=ch,
        ch_mult=tuple(w // ch for w in widths), num_res_blocks=layers,
        attn_resolutions=tuple(size // 2 ** i for i, a in enumerate(attended) if a),
        dropout=float(c['dropout']), resamp_with_conv=True, num_groups=groups,
        norm_eps=float(c['norm_eps']))
  except (TypeError, ValueError) as e:
    raise ValueError(f'diffusers config does not give a DDPM UNet: {e}') from None


def normalise_keys(state_dict):
  """The state dict with the old attention names renamed to the current diffusers ones."""
  out = {}
  for key, value in state_dict.items():
    parts = key.split('.')
    if len(parts) >= 4 and parts[-4] == 'attentions' and parts[-2] in OLD_ATTENTION_NAMES:
      key = '.'.join(parts[:-2] + [OLD_ATTENTION_NAMES[parts[-2]], parts[-1]])
    if key in out:
      raise ValueError(f'the state dict holds attention weights under both the old and the new '
                       f'diffusers names ({key})')
    out[key] = value
  return out


_RESNET_LEAVES = {'temb_proj': 'time_emb_proj', 'nin_shortcut': 'conv_shortcut'}
_ATTN_LEAVES = {'norm': 'group_norm', 'q': 'to_q', 'k': 'to_k', 'v': 'to_v',
                'proj_out': 'to_out.0'}
_FIXED_NAMES = {'temb.dense.0': 'time_embedding.linear_1',
                'temb.dense.1': 'time_embedding.linear_2',
                'mid.block_1': 'mid_block.resnets.0', 'mid.block_2': 'mid_block.resnets.1',
                'mid.attn_1': 'mid_block.attentions.0', 'norm_out': 'conv_norm_out'}
_BLOCKS = {'block': 'resnets', 'attn': 'attentions', 'downsample': 'downsamplers',
           'upsample': 'upsamplers'}


def _diffusers_key(key, levels):
  """The diffusers name of a DDPM "simple" `Model` key (ddpm_map), and whether it is attention.

  Up block i of the DDPM code is diffusers' up_blocks[levels - 1 - i]; resamplers are
  `downsamplers.0` / `upsamplers.0`; attention's 1x1 convs are Linear layers there.
  """
  module, leaf = key.rsplit('.', 1)
  for ours, theirs in _FIXED_NAMES.items():
    if module == ours or module.startswith(ours + '.'):
      attention = ours == 'mid.attn_1'
      rest = module[len(ours) + 1:]
      if rest:
        rest = (_ATTN_LEAVES if attention else _RESNET_LEAVES).get(rest, rest)
      return '.'.join(p for p in (theirs, rest, leaf) if p), attention
  parts = module.split('.')
  if parts[0] not in ('down', 'up') or len(parts) < 3:
    return key, False  # conv_in, conv_out
  level = int(parts[1]) if parts[0] == 'down' else levels - 1 - int(parts[1])
  kind = parts[2]
  prefix = f'{parts[0]}_blocks.{level}.{_BLOCKS[kind]}'
  if kind in ('downsample', 'upsample'):  # down.i.downsample.conv
    return f'{prefix}.0.{".".join(parts[3:])}.{leaf}', False
  sub = '.'.join(parts[4:])
  sub = (_ATTN_LEAVES if kind == 'attn' else _RESNET_LEAVES).get(sub, sub)
  return f'{prefix}.{parts[3]}.{sub}.{leaf}', kind == 'attn'


def name_map(config):
  """{flax path of `DDPMUNet`: (diffusers UNet2DModel key, transform name)}: the DDPM map with
  diffusers' names, and attention's q/k/v/proj_out read from Linear weights."""
  out = {}
  for path, (key, transform) in ddpm_map.name_map(config).items():
    name, attention = _diffusers_key(key, len(config.ch_mult))
    if attention and transform == 'conv':
      transform = 'linear_to_conv1x1'
    out[path] = (name, transform)
  return out


# scheduler_config.json: fields fixing the training noise schedule and what they must be.
_SCHEDULE = {'beta_schedule': 'linear', 'beta_start': 1e-4, 'beta_end': 0.02,
             'num_train_timesteps': 1000, 'trained_betas': None, 'prediction_type': 'epsilon',
             'rescale_betas_zero_snr': False}
# Sampling-time settings of diffusers' schedulers: they do not change what the network learned.
_SAMPLING = ('variance_type', 'clip_sample', 'clip_sample_range', 'thresholding',
             'dynamic_thresholding_ratio', 'sample_max_value', 'timestep_spacing', 'steps_offset',
             'set_alpha_to_one', 'skip_prk_steps', 'tensor_format', 'eta')


def check_scheduler(d):
  """A note on a diffusers `scheduler_config.json` dict whose training schedule is the sampler's
  (linear betas 1e-4..0.02 over 1000 steps, eps prediction); ValueError naming any other."""
  if not isinstance(d, dict):
    raise ValueError(f'scheduler config must be a JSON object, got {type(d).__name__}')
  unknown = sorted(set(d) - set(_SCHEDULE) - set(_SAMPLING) - set(METADATA))
  if unknown:
    raise ValueError(f'scheduler config has fields we do not know: {unknown}; not guessing '
                     'whether they change the noise schedule')
  for field, want in _SCHEDULE.items():
    value = d.get(field, want)
    if isinstance(want, float):
      ok = (isinstance(value, (int, float)) and not isinstance(value, bool)
            and math.isclose(value, want, rel_tol=1e-9))
    else:
      ok = value == want and isinstance(value, bool) == isinstance(want, bool)
    if not ok:
      raise ValueError(f'scheduler config {field}={value!r}: the sampler uses the linear beta '
                       'schedule (beta_start 1e-4, beta_end 0.02, 1000 steps) and eps '
                       f'prediction; {field} must be {want!r}')
  cls = d.get('_class_name', 'scheduler')
  return f'{cls}: linear betas 1e-4..0.02 over 1000 steps, eps prediction (the sampler\'s)'
