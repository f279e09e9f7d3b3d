"""Inputs of the CLIP encoders, made as X-Dyna makes them (spec §1.3 steps 2 and 7, §7.1).

* ``clip_pixel_values``: transformers' ``CLIPImageProcessor()`` with default arguments, PIL backend
  (shortest edge to 224, bicubic; centre crop 224; x/255; OpenAI mean/std), channels-last float32.
* ``uncond_pixel_values``: zeros in *normalised* space (an image of the CLIP mean colour), as the
  official IP-Adapter uncond branch.
* ``tokenize``: a ``CLIPTokenizer`` padded with its pad token (SD1.5: ``<|endoftext|>``) to 77 ids.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np


def default_image_processor(image_size: int = 224):
    """``CLIPImageProcessor()`` on the PIL backend, as the official code (transformers 4.x) ran it.

    transformers 5 picks a torchvision backend for ``CLIPImageProcessor`` when torchvision is
    installed (different resize); its ``CLIPImageProcessorPil`` is the PIL one. ``image_size`` other
    than 224 (small test encoders) resizes the shortest edge to it and centre-crops a square of it.
    """
    try:
        from transformers import CLIPImageProcessorPil as cls
    except ImportError:  # transformers 4.x: CLIPImageProcessor is the PIL ("slow") one
        from transformers import CLIPImageProcessor as cls
    if image_size == 224:
        return cls()
    return cls(size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size})


def clip_pixel_values(images: Any, processor: Any = None) -> np.ndarray:
    """PIL image(s) or uint8 (H, W, 3) array(s) -> (B, 224, 224, 3) float32, CLIP-normalised."""
    processor = default_image_processor() if processor is None else processor
    if not isinstance(images, (list, tuple)):
        images = [images]
    out = processor(images=list(images), return_tensors="np")["pixel_values"]
    return np.ascontiguousarray(np.asarray(out, np.float32).transpose(0, 2, 3, 1))


def uncond_pixel_values(like):
    """The IP-Adapter uncond input: ``zeros_like(pixel_values)`` (normalised space, not black)."""
    return np.zeros(np.shape(like), np.float32)


def tokenize(prompts: str | Sequence[str], tokenizer: Any, max_length: int = 77) -> np.ndarray:
    """(B, max_length) int32 ids as the SD1.5 pipeline makes them: BOS, tokens, EOS, pad (truncated)."""
    if isinstance(prompts, str):
        prompts = [prompts]
    ids = tokenizer(list(prompts), padding="max_length", max_length=max_length, truncation=True,
                    return_tensors="np")["input_ids"]
    return np.asarray(ids, np.int32)
