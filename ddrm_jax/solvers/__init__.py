"""Diffusion solvers beyond DDRM's linear SVD update, each `sample()` shaped like
`ddrm_jax.sampler.sample` (pure, one `lax.scan`, per-image keys fold_in(key, i))."""
