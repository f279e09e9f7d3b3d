"""Training reader over the ``array_record`` dataset of ``datasets.py`` (random access, no TF).

Each batch is a pure function of ``(seed, epoch, step, process_index, process_count, config)``:

* examples: the chosen splits concatenated (``human`` then ``scene``), global index ``g``;
* epoch order: ``default_rng([seed, epoch]).permutation(N)`` (identity if ``shuffle`` is off), the same
  on every host; host ``p`` of ``P`` takes ``order[p::P]`` (disjoint, together covering every example);
  every host runs ``steps_per_epoch = (N // P) // batch_size`` steps (same count on all hosts), the
  tail of an epoch is dropped;
* clip of example ``g`` in ``epoch``, from ``rng = default_rng([seed, epoch, g])``: ``clip_length``
  frames ``start + stride * k`` with ``start ~ U[0, T - span]``, ``span = (clip_length - 1) * stride + 1``.
  A video shorter than ``span`` uses the largest stride that fits; shorter than ``clip_length``, the
  last frame repeats;
* reference frame (the same example: the whole video, or the clip's segment when the dataset was built
  with ``segment_frames``): ``reference="any"`` draws it uniformly from all ``T`` frames
  (it may fall inside the clip); ``"outside_clip"`` draws it from the frames not covered by
  ``[start, start + span)``, or from all frames when the clip covers the whole video.

Batch: ``frames (B, 1 + clip_length, H, W, 3)`` uint8 (index 0 = reference, 1.. = clip), ``pose
(B, clip_length, H, W, 3)``, ``face (B, clip_length, H, W, 6)`` (zeros for scene videos), ``is_scene (B,)``.
With ``encoded`` (a dataset built with ``encode.frame_encoders``): ``vae_moments (B, 1 + clip_length, h,
w, 2*latent)`` float16, rows in the order of ``frames`` (reference first), and ``clip_hidden (B, tokens,
width)`` float16 of the reference frame. Resizing (``size``) is refused with them: the stored encodings
belong to the stored frame size.

Iterating decodes in background threads (``num_threads`` workers, ``prefetch`` batches queued).
``state()`` is the position of the next batch to be *returned* (``{"epoch", "step", "seed"}``, JSON
friendly); ``restore(state)`` continues with exactly the batches that would have followed (the state's
seed replaces ``cfg.seed``; host count, batch size and clip settings must be the same as when saved).
"""
from __future__ import annotations

import dataclasses
import queue
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Iterator, Literal, Mapping, Optional

import numpy as np

from .encode import FIELDS as ENCODED_FIELDS
from .records import DatasetError, decode_image, open_splits


@dataclasses.dataclass(frozen=True)
class LoaderConfig:
    data_dir: str = ""
    splits: tuple[str, ...] = ("human", "scene")
    batch_size: int = 1
    clip_length: int = 16
    stride: int = 1                                   # frame step inside a clip
    reference: Literal["any", "outside_clip"] = "any"
    seed: int = 0
    shuffle: bool = True
    size: Optional[tuple[int, int]] = None            # (H, W) resize at decode; None: sizes must match
    num_threads: int = 4
    prefetch: int = 2                                 # batches decoded ahead
    num_epochs: Optional[int] = None                  # None: iterate forever
    encoded: tuple[str, ...] = ()                     # pre-encoded fields to return: vae_moments, clip_hidden

    def __post_init__(self):
        for name in ("batch_size", "clip_length", "stride", "num_threads", "prefetch"):
            if getattr(self, name) < 1:
                raise ValueError(f"LoaderConfig.{name} must be >= 1, got {getattr(self, name)}")
        unknown = [e for e in self.encoded if e not in ENCODED_FIELDS]
        if unknown:
            raise ValueError(f"LoaderConfig.encoded: unknown field(s) {unknown}; "
                             f"expected some of {list(ENCODED_FIELDS)}")
        if self.encoded and self.size is not None:
            raise ValueError("LoaderConfig.size must be None with 'encoded': the stored encodings are of the "
                             "stored frame size (rebuild the dataset at the size you want)")


def clip_indices(num_frames: int, clip_length: int, stride: int, rng: np.random.Generator,
                 reference: str = "any") -> tuple[int, np.ndarray]:
    """``(reference_index, clip_frame_indices)`` by the rule in the module docstring."""
    t = num_frames
    s = stride
    if clip_length > 1 and (clip_length - 1) * s + 1 > t:
        s = max(1, (t - 1) // (clip_length - 1))
    span = min((clip_length - 1) * s + 1, t)
    start = int(rng.integers(0, t - span + 1))
    clip = np.minimum(start + s * np.arange(clip_length), t - 1)
    outside = np.concatenate([np.arange(0, start), np.arange(start + span, t)])
    if reference == "outside_clip" and outside.size:
        ref = int(outside[rng.integers(0, outside.size)])
    elif reference in ("any", "outside_clip"):
        ref = int(rng.integers(0, t))
    else:
        raise ValueError(f"reference must be 'any' or 'outside_clip', got {reference!r}")
    return ref, clip


class VideoClipLoader:
    """See the module docstring. Use as an iterator; ``close()`` (or ``with``) stops the threads."""

    def __init__(self, cfg: LoaderConfig, process_index: Optional[int] = None,
                 process_count: Optional[int] = None, state: Optional[Mapping[str, Any]] = None):
        if process_index is None or process_count is None:
            import jax
            process_index = jax.process_index() if process_index is None else process_index
            process_count = jax.process_count() if process_count is None else process_count
        if not 0 <= process_index < process_count:
            raise ValueError(f"process_index must be in [0, {process_count}), got {process_index}")
        if not cfg.data_dir:
            raise ValueError("LoaderConfig.data_dir is not set (the dataset folder written by `build`)")
        self.cfg, self.process_index, self.process_count = cfg, process_index, process_count
        self._sources = open_splits(cfg.data_dir, cfg.splits)
        self._index = [(split, i) for split in cfg.splits if split in self._sources
                       for i in range(len(self._sources[split]))]
        n = len(self._index)
        self.steps_per_epoch = (n // process_count) // cfg.batch_size
        if self.steps_per_epoch == 0:
            raise DatasetError(f"{cfg.data_dir}: {n} examples in splits {list(cfg.splits)} are too few for "
                               f"{process_count} host(s) x batch_size {cfg.batch_size}")
        self._seed, self._epoch, self._step = cfg.seed, 0, 0
        self._pool = ThreadPoolExecutor(cfg.num_threads)
        self._thread: Optional[threading.Thread] = None
        self._queue: Optional[queue.Queue] = None
        self._stop = threading.Event()
        if state is not None:
            self.restore(state)

    def __len__(self) -> int:
        return len(self._index)

    # ------------------------------------------------------------- pure functions of the position
    def epoch_order(self, epoch: int) -> np.ndarray:
        """Global example indices this host reads in ``epoch`` (before dropping the batch remainder)."""
        n = len(self._index)
        order = np.random.default_rng([self._seed, epoch]).permutation(n) if self.cfg.shuffle else np.arange(n)
        return order[self.process_index::self.process_count]

    def batch_indices(self, epoch: int, step: int) -> np.ndarray:
        b = self.cfg.batch_size
        return self.epoch_order(epoch)[step * b:(step + 1) * b]

    def load_batch(self, epoch: int, step: int) -> dict:
        """The batch at ``(epoch, step)`` (decoded with the thread pool)."""
        if not 0 <= step < self.steps_per_epoch:
            raise ValueError(f"step must be in [0, {self.steps_per_epoch}), got {step}")
        items = list(self._pool.map(lambda g: self._example(epoch, int(g)), self.batch_indices(epoch, step)))
        shapes = {it["frames"].shape[1:3] for it in items}
        if len(shapes) > 1:
            ids = ", ".join(f"{it['video_id']} {it['frames'].shape[1:3]}" for it in items)
            raise DatasetError(f"{self.cfg.data_dir}: videos of different sizes in one batch ({ids}); "
                               f"set LoaderConfig.size to resize")
        keys = ("frames", "pose", "face", "is_scene", *self.cfg.encoded)
        return {k: np.stack([it[k] for it in items]) for k in keys}

    def _example(self, epoch: int, g: int) -> dict:
        split, i = self._index[g]
        ex = self._sources[split][i]
        vid = ex["video_id"].decode() if isinstance(ex["video_id"], bytes) else str(ex["video_id"])
        where = f"{self.cfg.data_dir}:{split}/{vid}"
        t = int(ex["num_frames"])
        if len(ex["frames"]) != t:
            raise DatasetError(f"{where}: field 'frames' has {len(ex['frames'])} images, expected num_frames={t}")
        ref, clip = clip_indices(t, self.cfg.clip_length, self.cfg.stride,
                                 np.random.default_rng([self._seed, epoch, g]), self.cfg.reference)
        dec = lambda key, j, c: self._resize(decode_image(ex[key][j], c, f"{where} {key}[{j}]"))  # noqa: E731
        frames = np.stack([dec("frames", j, 3) for j in (ref, *clip)])
        is_scene = bool(ex["is_scene"])
        if is_scene:
            pose = np.zeros((len(clip), *frames.shape[1:3], 3), np.uint8)
            face = np.zeros((len(clip), *frames.shape[1:3], 6), np.uint8)
        else:
            for key in ("pose", "face"):
                if len(ex[key]) != t:
                    raise DatasetError(f"{where}: field {key!r} has {len(ex[key])} images, expected {t}")
            pose = np.stack([dec("pose", j, 3) for j in clip])
            face = np.stack([dec("face", j, 6) for j in clip])
        out = {"video_id": vid, "frames": frames, "pose": pose, "face": face, "is_scene": np.bool_(is_scene)}
        for key in self.cfg.encoded:
            if key not in ex:
                raise DatasetError(f"{where}: field {key!r} is not in this dataset (build it with "
                                   f"--vae / --image-encoder, or drop it from LoaderConfig.encoded)")
            arr = np.asarray(ex[key])
            if arr.shape[:1] != (t,):
                raise DatasetError(f"{where}: field {key!r} has shape {arr.shape}, expected {t} rows (num_frames)")
            out[key] = arr[[ref, *clip]] if ENCODED_FIELDS[key] == "frames" else arr[ref]
        return out

    def _resize(self, img: np.ndarray) -> np.ndarray:
        size = self.cfg.size
        if size is None or tuple(img.shape[:2]) == tuple(size):
            return img
        import cv2
        parts = [cv2.resize(img[..., c:c + 3], (size[1], size[0]), interpolation=cv2.INTER_AREA)
                 for c in range(0, img.shape[-1], 3)]
        return np.concatenate([p.reshape(*size, -1) for p in parts], axis=-1)

    # ------------------------------------------------------------- position
    def state(self) -> dict:
        return {"epoch": self._epoch, "step": self._step, "seed": self._seed}

    def restore(self, state: Mapping[str, Any]) -> None:
        missing = [k for k in ("epoch", "step", "seed") if k not in state]
        if missing:
            raise ValueError(f"loader state: missing key(s) {missing}; expected epoch, step, seed")
        epoch, step, seed = (int(state[k]) for k in ("epoch", "step", "seed"))
        if not 0 <= step < self.steps_per_epoch or epoch < 0:
            raise ValueError(f"loader state: step {step} / epoch {epoch} out of range "
                             f"(steps_per_epoch={self.steps_per_epoch})")
        self._stop_thread()
        self._epoch, self._step, self._seed = epoch, step, seed

    # ------------------------------------------------------------- background iteration
    def __iter__(self) -> Iterator[dict]:
        return self

    def __next__(self) -> dict:
        if self.cfg.num_epochs is not None and self._epoch >= self.cfg.num_epochs:
            raise StopIteration
        if self._thread is None:
            self._start_thread()
        item = self._queue.get()
        if isinstance(item, BaseException):
            self._stop_thread()
            raise item
        epoch, step, batch = item
        self._epoch, self._step = (epoch, step + 1) if step + 1 < self.steps_per_epoch else (epoch + 1, 0)
        return batch

    def _start_thread(self) -> None:
        self._stop = threading.Event()
        self._queue = queue.Queue(maxsize=self.cfg.prefetch)
        self._thread = threading.Thread(target=self._produce, args=(self._epoch, self._step, self._stop,
                                                                     self._queue), daemon=True)
        self._thread.start()

    def _produce(self, epoch: int, step: int, stop: threading.Event, q: queue.Queue) -> None:
        while not stop.is_set() and (self.cfg.num_epochs is None or epoch < self.cfg.num_epochs):
            try:
                item = (epoch, step, self.load_batch(epoch, step))
            except Exception as e:  # handed to the consumer, which re-raises it
                item = e
            while not stop.is_set():
                try:
                    q.put(item, timeout=0.1)
                    break
                except queue.Full:
                    continue
            if isinstance(item, BaseException):
                return
            epoch, step = (epoch, step + 1) if step + 1 < self.steps_per_epoch else (epoch + 1, 0)

    def _stop_thread(self) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._thread = None
            self._queue = None

    def close(self) -> None:
        self._stop_thread()
        self._pool.shutdown(wait=True)

    def __enter__(self) -> "VideoClipLoader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
