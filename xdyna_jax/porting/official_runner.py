"""The official side of ``porting verify``: bytedance/X-Dyna's PyTorch networks, imported from a checkout given
on the command line (never copied here), run on given weights and inputs.

Two ways to run it:

* in-process (``verify`` without ``--python``): this interpreter has torch and diffusers (the ``test`` extra);
* as a script under another interpreter (``verify --python PATH``, e.g. an oracle venv with diffusers 0.24)::

      PATH official_runner.py --xdyna-repo DIR --job JOB

  where JOB holds ``spec.json`` and ``inputs.npz``; it writes ``JOB/outputs.npz`` and prints one JSON line
  (versions, seconds).

The weights are the user's official files, read as the official scripts read them (``load_network``), never the
bundle's: a conversion error shows as a difference.

This file imports nothing from ``xdyna_jax`` (the oracle venv has no JAX): torch, diffusers, transformers, numpy,
pyyaml, einops and safetensors only. The patches below are applied at import time, never to files:

* ``torchvision`` stub: ``animatediff/models/motion_module.py`` imports it and never uses it;
* exact attention: without xformers the official attention classes call ``self._attention`` /
  ``self._slice_size``, which diffusers' ``Attention`` no longer has (0.24 on);
* moved diffusers modules: diffusers 0.26 moved ``models/unet_2d_blocks.py`` and ``unet_2d_condition.py`` into
  ``models/unets/``, which ``animatediff/models/controlnet.py`` imports from the old place.

Spec (JSON): ``{"networks": {part: {"kind", "config", "files"}}, "checks": [name, ...]}``, kinds ``unet``,
``controlnet``, ``resampler``, ``vae``, ``clip_vision``, ``clip_text``. Inputs and outputs are keyed
``"<check>/<name>"`` in the official layouts (``CHECKS`` lists each check's call).
"""
from __future__ import annotations

import argparse
import copy
import importlib
import importlib.util
import json
import sys
import time
import types
from pathlib import Path
from typing import Callable, Mapping

import numpy as np

OFFICIAL_COMMIT = "9a54f8e9b90c195eb1f21641c791896bcefe4ce0"  # what tools/official_parity was checked against
MOVED = {"diffusers.models.unet_2d_blocks": "diffusers.models.unets.unet_2d_blocks",
         "diffusers.models.unet_2d_condition": "diffusers.models.unets.unet_2d_condition"}
# the official IPAdapterAttention splits its context as 77 text + 16 image tokens and refuses anything else
OFFICIAL_TEXT_TOKENS, OFFICIAL_IP_TOKENS = 77, 16


class OfficialImportError(RuntimeError):
    """The official code cannot run in this interpreter; the message says what is missing."""


def _exact_attention(self, query, key, value, attention_mask=None):
    """The ``self._attention`` of the official non-xformers branch: softmax(q kᵀ · scale) v in float32 on the
    (batch·heads, n, d) tensors, folded back with ``batch_to_head_dim`` (what the xformers branch returns)."""
    import torch

    if attention_mask is not None:
        raise NotImplementedError("X-Dyna uses no attention mask")
    q, k, v = query.float(), key.float(), value.float()
    scores = torch.baddbmm(torch.empty(q.shape[0], q.shape[1], k.shape[1], dtype=torch.float32, device=q.device),
                           q, k.transpose(-1, -2), beta=0, alpha=self.scale)
    out = torch.bmm(scores.softmax(dim=-1), v).to(query.dtype)
    return self.batch_to_head_dim(out)


def load_official(xdyna_repo) -> types.SimpleNamespace:
    """Import the official networks from ``xdyna_repo`` (animatediff/, configs/) with the patches above."""
    repo = Path(xdyna_repo).resolve()
    if not (repo / "animatediff" / "models" / "unet.py").is_file():
        raise OfficialImportError(f"--official-repo {repo}: not a bytedance/X-Dyna checkout "
                                  f"(expected animatediff/models/unet.py there)")
    missing = [m for m in ("torch", "diffusers", "transformers", "einops", "yaml")
               if importlib.util.find_spec(m) is None]
    if missing:
        raise OfficialImportError(f"{', '.join(missing)} not importable by {sys.executable}")
    # transformers and diffusers first: they look torchvision up by import spec, which the stub lacks
    import diffusers
    import diffusers.models  # noqa: F401
    import transformers  # noqa: F401
    from diffusers.utils.import_utils import is_xformers_available

    if is_xformers_available():
        raise OfficialImportError("xformers is importable: the official code would use it instead of the exact "
                                  "attention this check patches in (use an interpreter without xformers)")
    stub = None
    if "torchvision" not in sys.modules and importlib.util.find_spec("torchvision") is None:
        stub = sys.modules["torchvision"] = types.ModuleType("torchvision")
    for old, new in MOVED.items():
        if importlib.util.find_spec(old) is None:
            sys.modules[old] = importlib.import_module(new)
    loaded = sys.modules.get("animatediff")
    if loaded is not None and Path(loaded.__path__[0]).resolve() != repo / "animatediff":
        raise OfficialImportError(f"--official-repo {repo}: this process already imported the official code from "
                                  f"{Path(loaded.__path__[0]).parent} (use one checkout per process)")
    if str(repo) not in sys.path:
        sys.path.insert(0, str(repo))
    try:
        from animatediff.models import attention as off_attention
        from animatediff.models import motion_module as off_motion
        from animatediff.models.controlnet import ControlNetModel
        from animatediff.models.ip_adapter import Resampler
        from animatediff.models.model_wrapper import ModelWrapper
        from animatediff.models.unet import UNet3DConditionModel
    except ImportError as e:
        raise OfficialImportError(f"{repo}: the official code does not import with diffusers "
                                  f"{diffusers.__version__} ({type(e).__name__}: {e})") from e
    finally:
        # motion_module.py holds its own reference; gone from sys.modules, later availability checks
        # (importlib.util.find_spec("torchvision")) see no torchvision rather than a spec-less stub
        if stub is not None and sys.modules.get("torchvision") is stub:
            del sys.modules["torchvision"]
    for cls in (off_attention.MixedCausalAttention2D, off_attention.SparseCausalAttention2D,
                off_attention.IPAdapterAttention, off_motion.VersatileAttention):
        cls._slice_size = None
        cls._attention = _exact_attention
    return types.SimpleNamespace(UNet3DConditionModel=UNet3DConditionModel, ControlNetModel=ControlNetModel,
                                 Resampler=Resampler, ModelWrapper=ModelWrapper, repo=repo)


def versions() -> dict:
    import diffusers
    import torch
    import transformers

    return {"python": sys.executable, "torch": torch.__version__, "diffusers": diffusers.__version__,
            "transformers": transformers.__version__, "numpy": np.__version__}


def shipped_unet_kwargs(repo) -> dict:
    """``unet_additional_kwargs`` of the checkout's ``configs/x_dyna.yaml`` (plain YAML: no omegaconf needed)."""
    import yaml

    path = Path(repo) / "configs" / "x_dyna.yaml"
    data = yaml.safe_load(path.read_text()) if path.is_file() else None
    if not isinstance(data, dict) or not isinstance(data.get("unet_additional_kwargs"), dict):
        raise OfficialImportError(f"{path}: expected the official x_dyna.yaml with unet_additional_kwargs")
    return data["unet_additional_kwargs"]


def deep_update(base: dict, over: Mapping) -> dict:
    out = copy.deepcopy(base)
    for k, v in over.items():
        out[k] = deep_update(out[k], v) if isinstance(v, Mapping) and isinstance(out.get(k), dict) else copy.deepcopy(v)
    return out


# --- networks ---------------------------------------------------------------------------------------

def build(off, net: Mapping):
    """The official (or diffusers / transformers, which the official code uses) module of one network spec,
    with its initial weights (the benchmarks load theirs with ``load_state``)."""
    kind, config = net["kind"], copy.deepcopy(net["config"])
    if kind == "unet":
        return off.UNet3DConditionModel.from_config(config, **deep_update(shipped_unet_kwargs(off.repo),
                                                                          net.get("kwargs", {})))
    if kind == "controlnet":
        with _quiet_diffusers():
            return off.ControlNetModel.from_config(config)
    if kind == "resampler":
        return off.Resampler(**config)
    if kind == "vae":
        from diffusers import AutoencoderKL

        return AutoencoderKL.from_config(config)
    return _clip_class(kind, config)(_clip_class(kind, config).config_class(**config))


def _clip_class(kind: str, config: Mapping):
    """The transformers class of a CLIP config: its ``architectures`` (SD1.5's text config.json has a
    ``projection_dim`` but is a plain ``CLIPTextModel``), else by whether it has a projection."""
    import transformers

    arch = (config.get("architectures") or [None])[0]
    if arch in ("CLIPVisionModel", "CLIPVisionModelWithProjection", "CLIPTextModel", "CLIPTextModelWithProjection"):
        return getattr(transformers, arch)
    if kind == "clip_vision":
        return transformers.CLIPVisionModelWithProjection if config.get("projection_dim") else \
            transformers.CLIPVisionModel
    if kind == "clip_text":
        return transformers.CLIPTextModelWithProjection if config.get("projection_dim") else transformers.CLIPTextModel
    raise ValueError(f"unknown network kind {kind!r}")


class _quiet_diffusers:
    """diffusers >= 0.26 logs a harmless "provide attention_head_dim" per ControlNet block (the official code
    passes head counts); the official ``from_pretrained_ip`` prints every missing key. Both are silenced."""

    def __enter__(self):
        import contextlib
        import io

        from diffusers.utils import logging as diffusers_logging

        self.level = diffusers_logging.get_verbosity()
        diffusers_logging.set_verbosity_error()
        self.out = contextlib.redirect_stdout(io.StringIO())
        self.out.__enter__()

    def __exit__(self, *exc):
        from diffusers.utils import logging as diffusers_logging

        self.out.__exit__(*exc)
        diffusers_logging.set_verbosity(self.level)


def load_state(model, state: Mapping[str, np.ndarray], part: str):
    """Load official-named arrays; only the buffers a model computes itself (motion ``.pe``, CLIP
    ``position_ids``) may be absent. A CLIP state keyed ``text_model.``/``vision_model.`` fits either naming."""
    import torch

    own = set(model.state_dict())
    state = dict(state)
    for prefix in ("text_model.", "vision_model."):
        if not any(k.startswith(prefix) for k in own) and any(k.startswith(prefix) for k in state):
            state = {k[len(prefix):] if k.startswith(prefix) else k: v for k, v in state.items()}
    missing = sorted(k for k in own - set(state) if not k.endswith(".pe") and not k.endswith("position_ids"))
    unexpected = sorted(set(state) - own)
    if missing or unexpected:
        raise ValueError(f"{part}: the weights do not fit the official network: "
                         f"{len(missing)} missing {missing[:5]}, {len(unexpected)} unexpected {unexpected[:5]}")
    model.load_state_dict({k: v if isinstance(v, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(v))
                           for k, v in state.items()}, strict=False)
    return model.eval().float()


def read_checkpoint(path, select: str | None = None) -> dict:
    """A checkpoint file as the official scripts read it: ``torch.load`` (tensors only: ``weights_only``), its
    ``state_dict`` if it has one, ``module.`` stripped (``inference_xdyna.py``); ``select`` picks a sub-dict
    (``image_proj`` of IP-Adapter's .bin). A .safetensors file is read with safetensors."""
    import torch

    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        raw = load_file(str(path))
        if select:  # a flat export keys the sub-dict as "image_proj.<key>"
            raw = {k[len(select) + 1:]: v for k, v in raw.items() if k.startswith(select + ".")} or raw
        return raw
    raw = torch.load(str(path), map_location="cpu", weights_only=True)
    if select is not None:
        if select not in raw:
            raise ValueError(f"{path}: no {select!r} entry (found {sorted(raw)[:5]})")
        raw = raw[select]
    raw = raw["state_dict"] if "state_dict" in raw else raw
    return {k.replace("module.", "") if "module." in k else k: v for k, v in raw.items()}


def _load_unet(off, net: Mapping, kwargs: dict):
    """``UNet3DConditionModel.from_pretrained_ip`` on the init file (with its folder's config.json, or the given
    config written beside a link to it), then the X-Dyna checkpoint ``strict=False`` as ``inference_xdyna.py``."""
    import tempfile

    files = net["files"]
    init = files.get("init")
    with _quiet_diffusers():
        if init is None:  # a complete UNet state dict: the network from its config, every key required
            return load_state(off.UNet3DConditionModel.from_config(net["config"], **kwargs),
                              read_checkpoint(files["checkpoint"]), "unet")
        init = Path(init)
        if init.name == "animatediff_v15_v1_ipplus.pth" and (init.parent / "config.json").is_file():
            model = off.UNet3DConditionModel.from_pretrained_ip(str(init.parent), unet_additional_kwargs=kwargs)
        else:
            with tempfile.TemporaryDirectory() as tmp:
                (Path(tmp) / "animatediff_v15_v1_ipplus.pth").symlink_to(init.resolve())
                (Path(tmp) / "config.json").write_text(json.dumps(net["config"]))
                model = off.UNet3DConditionModel.from_pretrained_ip(tmp, unet_additional_kwargs=kwargs)
    _, unexpected = model.load_state_dict(read_checkpoint(files["checkpoint"]), strict=False)
    if unexpected:
        raise ValueError(f"{files['checkpoint']}: {len(unexpected)} keys the official UNet does not have "
                         f"({sorted(unexpected)[:5]})")
    return model.eval().float()


def load_network(off, part: str, net: Mapping):
    """One network with the user's official weights, read from the official files as the official code does:
    ``net`` = {"kind", "files": {"checkpoint"[, "init"]}, "config" (the official config.json when there is one,
    else the bundle's), ...}."""
    kind, ckpt = net["kind"], Path(net["files"]["checkpoint"])
    if kind == "unet":
        return _load_unet(off, net, shipped_unet_kwargs(off.repo))
    if kind == "controlnet":
        with _quiet_diffusers():
            if ckpt.is_dir():  # a diffusers folder
                return off.ControlNetModel.from_pretrained(str(ckpt)).eval().float()
            model = off.ControlNetModel.from_config(net["config"])
        model.load_state_dict(read_checkpoint(ckpt), strict=True)
        return model.eval().float()
    if kind == "resampler":
        model = off.Resampler(**net["config"])
        model.load_state_dict(read_checkpoint(ckpt, select="image_proj"), strict=True)
        return model.eval().float()
    if ckpt.is_dir():  # diffusers / transformers folders: their own from_pretrained, as the official scripts
        if kind == "vae":
            from diffusers import AutoencoderKL

            return AutoencoderKL.from_pretrained(str(ckpt)).eval().float()
        return _clip_class(kind, net["config"]).from_pretrained(str(ckpt)).eval().float()
    return load_state(build(off, net), read_checkpoint(ckpt), part)


# --- checks -----------------------------------------------------------------------------------------

def _t(a):
    import torch

    return torch.from_numpy(np.ascontiguousarray(a))


def _unet(m, x):
    return {"out": m["unet"](_t(x["sample"]), _t(x["timestep"]), encoder_hidden_states=_t(x["context"])).sample}


def _controlnet(part):
    def run(m, x):
        down, mid = m[part](_t(x["sample"]), _t(x["timestep"]), encoder_hidden_states=_t(x["text"]),
                            controlnet_cond=_t(x["cond"]), conditioning_scale=1.0, return_dict=False)
        return {**{f"down_{i}": d for i, d in enumerate(down)}, "mid": mid}
    return run


def _vae(m, x):
    dist = m["vae"].encode(_t(x["image"])).latent_dist
    return {"mean": dist.mean, "logvar": dist.logvar, "decoded": m["vae"].decode(_t(x["latent"])).sample}


def _image_encoder(m, x):
    out = m["image_encoder"](pixel_values=_t(x["pixels"]), output_hidden_states=True)
    res = {"penultimate": out.hidden_states[-2]}
    if getattr(out, "image_embeds", None) is not None:
        res["image_embeds"] = out.image_embeds
    return res


def _denoise(m, x):
    """``ModelWrapper.forward`` with ``cross_id=True``: the training-time window forward (ControlNets on frames
    1.. with text states, a zero residual for the reference frame, pose + S-Face summed, UNet on all frames)."""
    import torch

    window, text = _t(x["window"]), _t(x["text"])
    f = window.shape[2] - 1
    wrapper = m["__wrapper__"](m["unet"], m["pose_controlnet"], m.get("face_controlnet"))
    out = wrapper(_t(x["timestep"]), window, torch.cat([text, _t(x["image_tokens"])], dim=1),
                  text.repeat_interleave(f, 0), _t(x["pose"]),
                  controlnet_xbody_condition=_t(x["face"]) if "face" in x else None, cross_id=True)
    return {"out": out}


# check -> (the networks it needs, its call); "denoise" also uses the face ControlNet when the spec has one
CHECKS: dict[str, tuple[tuple[str, ...], Callable]] = {
    "unet": (("unet",), _unet),
    "pose_controlnet": (("pose_controlnet",), _controlnet("pose_controlnet")),
    "face_controlnet": (("face_controlnet",), _controlnet("face_controlnet")),
    "resampler": (("resampler",), lambda m, x: {"out": m["resampler"](_t(x["x"]))}),
    "vae": (("vae",), _vae),
    "image_encoder": (("image_encoder",), _image_encoder),
    "text_encoder": (("text_encoder",), lambda m, x: {"out": m["text_encoder"](_t(x["ids"])).last_hidden_state}),
    "denoise": (("unet", "pose_controlnet"), _denoise),
}


def _needs(check: str, spec: Mapping) -> tuple[str, ...]:
    parts = CHECKS[check][0]
    if check == "denoise" and "face_controlnet" in spec["networks"]:
        parts += ("face_controlnet",)
    return parts


def run_checks(off, spec: Mapping, inputs: Mapping[str, np.ndarray], log=None) -> dict[str, np.ndarray]:
    """Outputs ``{"<check>/<name>": array}`` of every check in ``spec["checks"]``, in that order. Each network is
    loaded from its official files (``load_network``) when first needed and dropped after the last check that
    needs it, so the host holds as few official networks as possible at once."""
    import torch

    checks = list(spec["checks"])
    last = {p: i for i, c in enumerate(checks) for p in _needs(c, spec)}
    models, outputs = {"__wrapper__": off.ModelWrapper}, {}
    with torch.no_grad():
        for i, check in enumerate(checks):
            for part in _needs(check, spec):
                if part not in models:
                    models[part] = load_network(off, part, spec["networks"][part])
            x = {k.split("/", 1)[1]: v for k, v in inputs.items() if k.startswith(check + "/")}
            t0 = time.perf_counter()
            out = CHECKS[check][1](models, x)
            if log is not None:
                log(f"official {check}: {time.perf_counter() - t0:.1f} s")
            outputs.update({f"{check}/{k}": v.float().numpy() for k, v in out.items()})
            for part in [p for p, j in last.items() if j == i]:
                models.pop(part, None)
    return outputs


# --- script mode (another interpreter) --------------------------------------------------------------

def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="Run the official X-Dyna networks of a verify job.")
    ap.add_argument("--xdyna-repo", required=True, help="bytedance/X-Dyna checkout (animatediff/, configs/)")
    ap.add_argument("--job", required=True, help="folder with spec.json and inputs.npz")
    args = ap.parse_args(argv)
    job = Path(args.job)
    try:
        off = load_official(args.xdyna_repo)
    except OfficialImportError as e:
        print(f"error: {e}", file=sys.stderr)
        return 3  # verify reports this as "the official code does not run under --python"
    spec = json.loads((job / "spec.json").read_text())
    inputs = dict(np.load(job / "inputs.npz"))
    t0 = time.perf_counter()
    outputs = run_checks(off, spec, inputs, log=lambda s: print(s, file=sys.stderr, flush=True))
    np.savez(job / "outputs.npz", **outputs)
    print(json.dumps({"versions": versions(), "seconds": round(time.perf_counter() - t0, 2)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
