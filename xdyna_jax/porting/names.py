"""The one rule table between official (torch) state-dict keys and our Flax param paths.

Flax module paths mirror torch module paths, so the rules are mechanical:
  * a numeric key component joins the one before it with "_":
    ``down_blocks.0.attentions.1`` <-> ``down_blocks_0/attentions_1``, ``layers.0.1.1`` <-> ``layers_0_1_1``;
  * leaves: Linear ``weight`` (out, in) <-> ``kernel`` (in, out); Conv ``weight`` (O, I, kh, kw) <->
    ``kernel`` (kh, kw, I, O); norm ``weight`` (C,) <-> ``scale``; Embedding ``weight`` (rows, C) <->
    ``embedding`` (same layout) for the modules in ``EMBEDDING_NAMES``; anything else (``bias``,
    ``latents``, ``class_embedding``) keeps its name and layout;
  * one path-aware layout rule: a GEGLU ``proj`` (``.../net_0/proj/{kernel,bias}``; diffusers'
    ``FeedForward`` is the only module with that path in these models) is [values | gates]
    officially and value/gate interleaved here (``GEGLU_PROJ``), so that tensor parallelism can
    split it in contiguous blocks.
The only ambiguity of the reverse direction is a module whose own name ends in ``_<digits>``
(``time_embedding.linear_1``); those few names are listed in ``LITERAL_NAMES``. The coverage tests
check that both directions are inverse on every official key.
"""
from __future__ import annotations

import re
from typing import Any, Iterator, Mapping, NamedTuple

import numpy as np
from flax import traverse_util

# Module names whose trailing "_<digits>" belongs to the name, not to a list index.
LITERAL_NAMES = frozenset({"linear_1", "linear_2"})

# torch ``nn.Embedding`` modules: their 2-D ``weight`` is a table (rows, C), kept as Flax ``embedding``.
EMBEDDING_NAMES = frozenset({"token_embedding", "position_embedding"})

# Permutations from the official layout to ours, by ndim of a ``weight``; the inverse permutes back.
_TO_FLAX_PERM = {2: (1, 0), 4: (2, 3, 1, 0)}
_TO_TORCH_PERM = {2: (1, 0), 4: (3, 2, 0, 1)}

# Path suffix (module names before the leaf) of the GEGLU projections stored interleaved.
GEGLU_PROJ = ("net_0", "proj")

_INDEXED = re.compile(r"^(.*?[A-Za-z][A-Za-z0-9]*?)((?:_\d+)+)$")

Path = tuple[str, ...]


class NamingError(ValueError):
    """A key or path that the rule table cannot translate."""


class Entry(NamedTuple):
    """One official tensor: its key, the Flax path it lives at, and its official shape.

    ``buffer`` is True for non-param tensors (the motion-module ``pos_encoder.pe``), whose path is
    where the module that recomputes them lives (they are not in the param tree).
    """

    key: str
    path: Path
    shape: tuple[int, ...]
    buffer: bool = False


def module_path(dotted: str) -> Path:
    """``"down_blocks.0.attentions.1"`` -> ``("down_blocks_0", "attentions_1")``."""
    out: list[str] = []
    for part in dotted.split(".") if dotted else []:
        if part.isdigit():
            if not out:
                raise NamingError(f"{dotted!r}: a key cannot start with an index")
            out[-1] = f"{out[-1]}_{part}"
        else:
            out.append(part)
    return tuple(out)


def module_key(path: Path) -> str:
    """Inverse of ``module_path``: ``("layers_0_1_1",)`` -> ``"layers.0.1.1"``."""
    parts: list[str] = []
    for comp in path:
        m = _INDEXED.match(comp)
        if m is None or comp in LITERAL_NAMES:
            parts.append(comp)
        else:
            parts.append(m.group(1))
            parts.extend(m.group(2)[1:].split("_"))
    return ".".join(parts)


def flax_leaf(torch_leaf: str, ndim: int) -> str:
    if torch_leaf == "weight":
        if ndim == 1:
            return "scale"
        if ndim in _TO_FLAX_PERM:
            return "kernel"
        raise NamingError(f"no rule for a {ndim}-d 'weight'")
    if torch_leaf in ("kernel", "scale", "embedding"):
        raise NamingError(f"official leaf {torch_leaf!r} would collide with a Flax leaf name")
    return torch_leaf


def torch_leaf(flax_leaf_name: str) -> str:
    return "weight" if flax_leaf_name in ("kernel", "scale", "embedding") else flax_leaf_name


def key_to_path(key: str, ndim: int) -> Path:
    """Official key (and the ndim of its tensor) -> Flax param path."""
    mod, _, leaf = key.rpartition(".")
    path = module_path(mod)
    if leaf == "weight" and ndim == 2 and path and path[-1] in EMBEDDING_NAMES:
        return path + ("embedding",)
    return path + (flax_leaf(leaf, ndim),)


def path_to_key(path: Path) -> str:
    """Flax param path -> official key."""
    mod = module_key(path[:-1])
    leaf = torch_leaf(path[-1])
    return f"{mod}.{leaf}" if mod else leaf


def is_geglu_proj(path: Path) -> bool:
    return tuple(path[-3:-1]) == GEGLU_PROJ


def interleave_halves(value: np.ndarray) -> np.ndarray:
    """Last axis [a_0..a_{n-1} | b_0..b_{n-1}] -> [a_0, b_0, a_1, b_1, ...] (official GEGLU -> ours)."""
    n = _half(value)
    return value.reshape(value.shape[:-1] + (2, n)).swapaxes(-1, -2).reshape(value.shape)


def split_halves(value: np.ndarray) -> np.ndarray:
    """Inverse of ``interleave_halves`` (ours -> official GEGLU)."""
    n = _half(value)
    return value.reshape(value.shape[:-1] + (n, 2)).swapaxes(-1, -2).reshape(value.shape)


def _half(value: np.ndarray) -> int:
    if value.ndim == 0 or value.shape[-1] % 2:
        raise NamingError(f"a GEGLU proj needs an even last axis, got shape {value.shape}")
    return value.shape[-1] // 2


def to_flax(value: np.ndarray, path: Path) -> np.ndarray:
    """Official tensor -> Flax layout for the param at ``path`` (the leaf name is ``path[-1]``)."""
    if path[-1] == "kernel":
        value = np.transpose(value, _TO_FLAX_PERM[value.ndim])
    if is_geglu_proj(path):  # after the transpose: the output features are the last axis
        value = interleave_halves(value)
    return value


def to_torch(value: np.ndarray, path: Path) -> np.ndarray:
    """Flax param at ``path`` -> official layout."""
    if is_geglu_proj(path):
        value = split_halves(value)
    if path[-1] == "kernel":
        if value.ndim not in _TO_TORCH_PERM:
            raise NamingError(f"no rule for a {value.ndim}-d 'kernel'")
        return np.transpose(value, _TO_TORCH_PERM[value.ndim])
    return value


def official_shape(shape: tuple[int, ...], leaf: str) -> tuple[int, ...]:
    if leaf == "kernel":
        if len(shape) not in _TO_TORCH_PERM:
            raise NamingError(f"no rule for a {len(shape)}-d 'kernel'")
        return tuple(shape[i] for i in _TO_TORCH_PERM[len(shape)])
    return tuple(shape)


def flat(tree: Mapping[str, Any]) -> dict[Path, Any]:
    return traverse_util.flatten_dict(dict(tree))


def entries(tree: Mapping[str, Any], pe_max_len: int | None = None) -> list[Entry]:
    """Every official tensor of a param(-shape) tree: params first, then ``pe`` buffers.

    ``pe_max_len`` (the motion config's ``temporal_position_encoding_max_len`` when
    ``temporal_position_encoding`` is on, else None) adds one ``pos_encoder.pe`` buffer per
    ``attention_blocks_i`` module under a ``motion_modules_*`` module, shape (1, max_len, C).
    """
    out = [Entry(path_to_key(p), p, official_shape(tuple(v.shape), p[-1])) for p, v in flat(tree).items()]
    if pe_max_len is not None:
        out.extend(_pe_entries(tree, pe_max_len))
    return out


def _pe_entries(tree: Mapping[str, Any], max_len: int) -> Iterator[Entry]:
    seen: set[Path] = set()
    for p, v in flat(tree).items():
        # .../motion_modules_j/.../attention_blocks_i/to_q/kernel: C is the to_q input width
        if p[-2:] != ("to_q", "kernel") or not any(c.startswith("motion_modules_") for c in p):
            continue
        mod = p[:-2]
        if not mod[-1].startswith("attention_blocks_") or mod in seen:
            continue
        seen.add(mod)
        yield Entry(module_key(mod) + ".pos_encoder.pe", mod, (1, max_len, int(v.shape[0])), buffer=True)
