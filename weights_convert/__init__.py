"""PyTorch -> Flax weight conversion for the paper's checkpoints (`python -m weights_convert`).

`convert.convert_file(src, config_name, out)` reads a torch state dict (weights only), maps it
through `<family>_map.name_map(config)` and `transforms`, checks it against `jax.eval_shape` of the
model and writes a `ddrm_jax.checkpoints` directory. The only part of the project importing torch.
"""
