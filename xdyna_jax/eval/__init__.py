"""Eval room: every score of generated videos against their driving videos (``docs/EVAL.md``).

Modules (one job each): ``pairing`` (which files go together, frame count and size rules), ``frames`` (L1,
PSNR, SSIM), ``lpips`` (LPIPS and per-frame features), ``fvd`` (I3D features, Fréchet distance), ``pose``
(PCK, joint distance, skeleton overlap), ``score`` (overlap of two skeleton renders, also used by
``python -m xdyna_jax.data score``), ``face`` (Face-Det rate, expression distance), ``flow`` (optical flow
inside / outside the person), ``evaluate`` (one pair, the pooled mean, the protocol), ``report`` (the
output files), ``extras`` (optional packages), ``corrupt`` (known corruptions for checks), ``__main__``
(the CLI). Importing this package imports nothing heavy; each module imports its packages when used.
"""
