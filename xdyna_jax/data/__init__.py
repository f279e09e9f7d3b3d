"""Data room: everything between raw videos and training batches.

Modules (one job each): ``video`` (read/write mp4), ``pose`` (MediaPipe -> OpenPose-18 + hands + face mesh),
``render`` (the authors' no-head skeleton style), ``align`` (retarget a driving skeleton onto a reference
body), ``sface`` (the 6-channel S-Face condition of spec §7.4),
``records`` (the on-disk image codec and split access), ``datasets`` (TFDS ``array_record`` builders, no
TensorFlow), ``examples`` (one video -> its examples, the per-video work of a build), ``beam`` (the same
build as an Apache Beam pipeline; imports ``apache_beam``), ``loader`` (host-sharded, deterministic, resumable clip reader), ``__main__`` (the CLI).
The overlap of two skeleton renders (``score`` subcommand) lives in ``xdyna_jax.eval.score`` with every other
score.
"""
