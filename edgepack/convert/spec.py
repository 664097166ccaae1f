"""What an architecture family declares: the data a converter needs, and nothing else.

A family module builds one ``ArchSpec`` and calls ``register``; the shared core (``core.py``) does the rest:
hyperparameters are copied from config.json to GGUF keys by the ``hparams`` table, tensors are renamed with
``gguf.TensorNameMap`` for ``arch``, ``transforms`` rewrite the few tensors whose layout differs between
Hugging Face and llama.cpp, and ``check`` rejects configs the family cannot represent faithfully.

The same spec sizes a model without its weights (``edgepack fit --config``, edgepack/fit/describe.py): ``gguf_tensors``
turns ``tensors`` into the GGUF names and shapes convert would write, and ``sizes`` (a ``SizeFacts``) states
the per-layer facts the tensors alone do not tell. How a new family plugs in:

* tensors, hparams, metadata, transforms, check: what convert needs (above). Nothing else is needed for a
  plain decoder: the default ``sizes`` (``uniform_sizes``) says every layer has a full-context KV cache of
  num_key_value_heads x head_dim.
* ``sizes=lambda config: uniform_sizes(config, sliding=..., window=...)`` when some layers slide;
* ``sizes=`` a function returning ``SizeFacts(layers=tuple(LayerSize(...) for each layer), ...)`` when layers
  differ otherwise: per-layer KV heads and head sizes, layers that read another layer's KV (``kv_shared``),
  recurrent/convolution layers (``n_head_kv=0`` and their fixed per-sequence ``state_floats``), experts
  (``n_expert`` / ``n_expert_used``), tables read one row per token (``lookup_tensors``: per-layer embeddings).

tests/integration/test_fit_families.py sizes every registered class from its tiny test config and compares with
llama.cpp's own numbers for the converted file.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import gguf
import numpy as np

from ..errors import BadCheckpoint, UnsupportedArchitecture
from ..limits import MAX_EXPERTS, MAX_LAYERS, MAX_VOCAB

REQUIRED = object()
# The schema of the config.json keys every family reads: (kind, upper bound). A wrong type, a NaN, zero heads or a
# size no real model has is refused here, at the boundary, with the key's name, instead of failing deep inside a
# family or the sizing code (or asking for terabytes). Bounds are far above real models; layers and vocabulary use
# llama.cpp's own limits. null means "not set" for every key.
_CONFIG_SCHEMA: dict[str, tuple[str, float]] = {
    **{k: ("int", 1 << 20) for k in ("hidden_size", "n_embd", "num_attention_heads", "n_head",
                                     "num_key_value_heads", "head_dim")},
    # 0 experts is a dense model (Granite 4.0-Micro writes num_local_experts = 0)
    **{k: ("count", MAX_EXPERTS) for k in ("num_experts", "num_local_experts", "num_experts_per_tok")},
    "moe_intermediate_size": ("count", 1 << 24),
    **{k: ("int", MAX_LAYERS) for k in ("num_hidden_layers", "n_layer")},
    **{k: ("ints", 1 << 24) for k in ("intermediate_size", "n_inner")},  # Gemma 3n: one per layer
    **{k: ("int", 1 << 32) for k in ("max_position_embeddings", "n_positions", "n_ctx", "sliding_window")},
    "vocab_size": ("int", MAX_VOCAB),
    **{k: ("float", 1.0) for k in ("rms_norm_eps", "layer_norm_eps", "layer_norm_epsilon")},
    "partial_rotary_factor": ("float", 1.0),
    "rope_theta": ("float", 1e12),
    **{k: ("object", 0) for k in ("rope_scaling", "rope_parameters")},
}


def _shown(value) -> str:
    return repr(value)[:60]


def _check_types(text: dict) -> None:
    for key, (kind, bound) in _CONFIG_SCHEMA.items():
        value = text.get(key)
        if value is None:
            continue
        if kind == "object":
            ok, expected = isinstance(value, dict), "an object"
        elif kind in ("int", "ints", "count"):
            values = value if kind == "ints" and isinstance(value, list) and len(value) <= MAX_LAYERS else [value]
            low = 0 if kind == "count" else 1
            ok = all(isinstance(v, int) and not isinstance(v, bool) and low <= v <= bound for v in values)
            expected = f"an integer from {low} to {int(bound):,}" + (" or a list of them" if kind == "ints" else "")
        else:
            ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) \
                and 0 < value <= bound
            expected = f"a number above 0 and at most {bound:g}"
        if not ok:
            raise BadCheckpoint(f"config.json: {key} is {_shown(value)} (expected {expected})",
                                "fix or re-download config.json")


class HFConfig:
    """config.json with the differences between transformers 4.x and 5.x smoothed over.

    5.x moved ``rope_theta`` and ``rope_scaling`` into ``rope_parameters`` and renamed ``torch_dtype`` to
    ``dtype``; older GPT-style configs use ``n_ctx``/``n_embd`` names. ``get`` tries names in order, in the
    text model's config (``text_config`` of a multimodal model), then in ``defaults``: the values the model's
    transformers config class fills in, since config.json leaves out what equals them (``ArchSpec.defaults``).
    """

    def __init__(self, data: dict, defaults: dict | None = None):
        self.data = data
        text = data.get("text_config")
        if text is not None and not isinstance(text, dict):
            raise BadCheckpoint(f"config.json: text_config is {_shown(text)} (expected an object)",
                                "fix or re-download config.json")
        self.text = text or data
        self.defaults = defaults or {}
        _check_types(self.text)

    def with_defaults(self, defaults: dict) -> HFConfig:
        return HFConfig(self.data, defaults) if defaults else self

    def get(self, *names: str, default=REQUIRED):
        for name in names:
            value = self.text.get(name)
            if value is not None:
                return value
        for name in names:
            if name in self.defaults and name not in self.text:  # an explicit null is not a default
                return self.defaults[name]
        if default is REQUIRED:
            raise BadCheckpoint(f"config.json has no {' / '.join(names)}", "re-download config.json")
        return default

    @property
    def architecture(self) -> str:
        archs = self.data.get("architectures") or []
        if not archs or not isinstance(archs, list):
            raise BadCheckpoint("config.json names no architecture ('architectures' is missing)",
                                "re-download config.json from the model repository")
        return archs[0]

    @property
    def rope_parameters(self) -> dict:
        """rope settings as one dict: rope_theta, rope_type and the scaling factors (4.x and 5.x layouts)."""
        params = dict(self.text.get("rope_parameters") or {})
        scaling = self.text.get("rope_scaling") or {}
        params.update({k: v for k, v in scaling.items() if k not in params})
        if "rope_theta" not in params and self.text.get("rope_theta") is not None:
            params["rope_theta"] = self.text["rope_theta"]
        if "rope_type" not in params and "type" in params:
            params["rope_type"] = params["type"]
        return params

    @property
    def head_dim(self) -> int:
        explicit = self.get("head_dim", default=None)
        if explicit:
            return int(explicit)
        return int(self.get("hidden_size", "n_embd")) // int(self.get("num_attention_heads", "n_head"))

    @property
    def rotary_dims(self) -> int:
        """Dimensions per head that rope rotates: head_dim × partial_rotary_factor, which transformers 5.x keeps
        in rope_parameters and 4.x at the top level (Phi-3, StableLM)."""
        factor = self.rope_parameters.get("partial_rotary_factor")
        if factor is None:
            factor = self.get("partial_rotary_factor", default=1.0)
        return int(self.head_dim * float(factor))

    @property
    def n_head(self) -> int:
        return int(self.get("num_attention_heads", "n_head"))

    @property
    def n_head_kv(self) -> int:
        return int(self.get("num_key_value_heads", default=self.n_head))


@dataclass(frozen=True)
class HParam:
    """One GGUF key filled from config.json: ``key`` is a gguf.Keys template, ``names`` the config names tried."""

    key: str
    names: tuple[str, ...]
    kind: type = int
    default: object = REQUIRED


@dataclass(frozen=True)
class Part:
    """A contiguous block of one checkpoint tensor: the tensor ``name`` (whose full shape config.json implies is
    ``source_shape``), indexed by the leading ``index`` (e.g. ``(expert,)`` of a fused [experts, ...] tensor),
    then optionally cut to ``rows`` (a [start, stop) range of the next axis: the gate or up half of a fused
    gate_up). Leading indices and one range of the axis after them always select contiguous bytes."""

    name: str
    source_shape: tuple[int, ...]
    index: tuple[int, ...] = ()
    rows: tuple[int, int] | None = None

    @property
    def shape(self) -> tuple[int, ...]:
        rest = self.source_shape[len(self.index):]
        if self.rows is None:
            return rest
        return (self.rows[1] - self.rows[0],) + rest[1:]

    @property
    def start(self) -> int:
        """Offset of the block's first element in the source tensor (row-major)."""
        offset, stride = 0, math.prod(self.source_shape)
        for axis, i in enumerate(self.index):
            stride //= self.source_shape[axis]
            offset += i * stride
        if self.rows is not None:
            offset += self.rows[0] * math.prod(self.source_shape[len(self.index) + 1:])
        return offset


@dataclass(frozen=True)
class Expected:
    """A tensor a checkpoint must (or may) hold, with the shape config.json implies (HF row-major order).

    A GGUF tensor that llama.cpp wants stacked or cut from checkpoint tensors (a layer's experts as one
    [experts, rows, cols] tensor) is declared under the name llama.cpp's tensor map knows it by, with
    ``forms``: each form is the parts that, concatenated in order, make it. The first form whose tensors are all
    in the checkpoint is used (e.g. per-expert tensors as on the Hub, or transformers 5's fused ones); the parts
    are read and written one at a time, so the whole tensor is never held in memory.
    """

    shape: tuple[int, ...]
    optional: bool = False
    # The shape the family's transform returns, when it differs from ``shape`` (e.g. GPT-2's Conv1D weights,
    # stored transposed): what the GGUF declares. None: the transform keeps the shape.
    out_shape: tuple[int, ...] | None = None
    forms: tuple[tuple[Part, ...], ...] = ()
    # The GGUF name, where gguf-py's tensor map does not know the tensor for this architecture (or knows it
    # with another suffix than llama.cpp reads). None: the map decides.
    gguf_name: str | None = None


# An extra GGUF key computed from the config (name, value, GGUF value type).
Metadata = tuple[str, object, gguf.GGUFValueType]
# A transform takes (tensor, config) and returns the tensor in llama.cpp's layout.
Transform = Callable[[np.ndarray, HFConfig], np.ndarray]


@dataclass(frozen=True)
class LayerSize:
    """What one layer costs at generation time beyond its weights (what ``edgepack fit`` sizes).

    ``n_head_kv`` KV heads with ``head_dim_k`` / ``head_dim_v`` are cached per token unless the layer is
    ``kv_shared`` (it attends to an earlier layer's cache and holds none) or has no attention (``n_head_kv`` 0:
    a recurrent or convolution layer). ``sliding_window`` > 0: the cache holds only that many tokens.
    ``state_floats``: a recurrent/convolution state per sequence, fixed whatever the context (F32 values).
    ``n_head``: query heads (attention FLOPs and the attention compute buffer); 0 without attention.
    """

    n_head: int
    n_head_kv: int
    head_dim_k: int
    head_dim_v: int
    sliding_window: int = 0
    kv_shared: bool = False
    state_floats: int = 0

    @property
    def has_attention(self) -> bool:
        return self.n_head > 0

    @property
    def has_kv_cache(self) -> bool:
        return self.n_head_kv > 0 and not self.kv_shared


@dataclass(frozen=True)
class SizeFacts:
    """The facts about a model that its tensor list does not tell (see ``uniform_sizes`` for the defaults).

    ``n_ff``: the widest feed-forward (compute buffer). ``n_expert`` / ``n_expert_used``: experts stored and
    read per token (GGUF tensors named ``*_exps``). ``lookup_tensors``: GGUF tables of which a token reads one
    row (the token embedding, per-layer embeddings) unless they double as the output matrix.
    """

    layers: tuple[LayerSize, ...]
    n_embd: int
    n_vocab: int
    n_ff: int
    n_ctx_train: int
    n_expert: int = 0
    n_expert_used: int = 0
    lookup_tensors: tuple[str, ...] = ("token_embd.weight",)


def uniform_sizes(config: HFConfig, sliding: list[bool] | None = None, window: int = 0) -> SizeFacts:
    """Every layer alike: num_key_value_heads x head_dim cached per token; ``sliding`` (one bool per layer)
    marks the layers whose cache holds only ``window`` tokens; experts from transformers' usual names."""
    n_layer = int(config.get("num_hidden_layers", "n_layer"))
    sliding = sliding or [False] * n_layer
    layer = LayerSize(config.n_head, config.n_head_kv, config.head_dim, config.head_dim)
    layers = tuple(LayerSize(layer.n_head, layer.n_head_kv, layer.head_dim_k, layer.head_dim_v,
                             sliding_window=window if slides else 0) for slides in sliding)
    hidden = int(config.get("hidden_size", "n_embd"))
    return SizeFacts(layers=layers, n_embd=hidden, n_vocab=int(config.get("vocab_size")),
                     n_ff=int(config.get("intermediate_size", "n_inner", default=None) or 4 * hidden),
                     n_ctx_train=int(config.get("max_position_embeddings", "n_positions", "n_ctx", default=0)),
                     # transformers' names for a sparse MoE's experts (Mixtral, Qwen-MoE, LFM2-MoE, ...)
                     n_expert=int(config.get("num_experts", "num_local_experts", default=0) or 0),
                     n_expert_used=int(config.get("num_experts_per_tok", default=0) or 0))


@dataclass(frozen=True)
class ArchSpec:
    """Everything the shared converter core needs to know about one architecture family."""

    hf_classes: tuple[str, ...]
    arch: gguf.MODEL_ARCH
    hparams: tuple[HParam, ...]
    # Every tensor the checkpoint holds, by HF name, in the order they are written.
    tensors: Callable[[HFConfig], dict[str, Expected]]
    # Keys computed from the config (rope scaling, head sizes); may raise UnsupportedArchitecture.
    metadata: Callable[[HFConfig], Iterable[Metadata]] = lambda config: ()
    # regex on the HF tensor name -> transform.
    transforms: dict[str, Transform] = field(default_factory=dict)
    # Tensors llama.cpp needs that the checkpoint does not hold (e.g. rope frequency factors).
    extra_tensors: Callable[[HFConfig], Iterable[tuple[str, np.ndarray]]] = lambda config: ()
    # regex on HF tensor names that carry nothing llama.cpp uses (e.g. cached rotary inv_freq buffers).
    ignore: tuple[str, ...] = ()
    # Called first: raise UnsupportedArchitecture for settings the family cannot reproduce exactly.
    check: Callable[[HFConfig], None] = lambda config: None
    # A prefix of the names in ``tensors`` that some checkpoints leave out (saved from the base model class
    # rather than the *ForCausalLM one): when no checkpoint tensor carries it, it is dropped from every name.
    optional_prefix: str = ""
    # (regex, replacement) pairs applied in order to every checkpoint tensor name first: a text decoder saved
    # inside a multimodal class (``language_model.model.`` by transformers 4.x, ``model.language_model.`` by
    # 5.x) is then named as the text-only class names it, and ``tensors``/``transforms`` see those names; a
    # buffer saved without ``.weight`` gets it, so gguf's name map finds it.
    renames: tuple[tuple[str, str], ...] = ()
    # regex on (renamed) tensor names -> the checkpoint part they belong to, for parts llama.cpp's text model
    # does not use (a vision tower, its projector, an audio encoder, k/v projections of KV-shared layers): not
    # converted, and the result says so. A function of the config when the parts depend on it.
    dropped: dict[str, str] | Callable[[HFConfig], dict[str, str]] = field(default_factory=dict)
    # The GGUF tokenizer model llama.cpp needs for this architecture when the tokenizer files do not decide it
    # (Gemma 4: "gemma4"); None: worked out from the files (see vocab.load_vocab).
    tokenizer_model: str | None = None
    # config.json values that transformers' config class supplies when the file leaves them out (multimodal
    # checkpoints save a sparse text_config); see HFConfig.
    defaults: dict = field(default_factory=dict)
    # Per-layer facts for sizing (``edgepack fit``) that the tensors do not tell; see the module docstring.
    sizes: Callable[[HFConfig], SizeFacts] = uniform_sizes
    # The spec that stands in for this one for some configs of the class (a GraniteMoeHybrid checkpoint without
    # Mamba layers runs as llama.cpp's granite architecture); None: this spec.
    variant: Callable[[HFConfig], "ArchSpec | None"] = lambda config: None

    @property
    def arch_name(self) -> str:
        return gguf.MODEL_ARCH_NAMES[self.arch]

    def transform_for(self, hf_name: str) -> Transform | None:
        for pattern, fn in self.transforms.items():
            if re.search(pattern, hf_name):
                return fn
        return None

    def ignores(self, hf_name: str) -> bool:
        return any(re.search(p, hf_name) for p in self.ignore)

    def renamed(self, checkpoint_name: str) -> str:
        for pattern, replacement in self.renames:
            checkpoint_name = re.sub(pattern, replacement, checkpoint_name, count=1)
        return checkpoint_name

    def dropped_parts(self, config: HFConfig) -> dict[str, str]:
        return self.dropped(config) if callable(self.dropped) else self.dropped


def gguf_name_of(name: str, e: Expected, name_map: gguf.TensorNameMap) -> str:
    """The GGUF name convert writes the tensor ``name`` under: the family's own, else gguf-py's map's."""
    gguf_name = e.gguf_name or name_map.get_name(name, try_suffixes=(".weight", ".bias"))
    if gguf_name is None:
        raise UnsupportedArchitecture(f"no llama.cpp name for tensor {name}", "report this as a bug")
    return gguf_name


def gguf_tensors(spec: ArchSpec, config: HFConfig) -> list[tuple[str, tuple[int, ...]]]:
    """(GGUF name, GGUF shape) of every tensor convert writes for ``config`` (optional tensors, which a
    checkpoint may or may not hold, left out), without reading a checkpoint. GGUF shapes list the row length
    first (the reverse of Hugging Face's)."""
    name_map = gguf.get_tensor_name_map(spec.arch, int(config.get("num_hidden_layers", "n_layer")))
    out = [(gguf_name_of(name, e, name_map), _ggml_dims(tuple(reversed(e.out_shape or e.shape))))
           for name, e in spec.tensors(config).items() if not e.optional]
    out += [(name, _ggml_dims(tuple(reversed(data.shape)))) for name, data in spec.extra_tensors(config)]
    return out


def _ggml_dims(shape: tuple[int, ...]) -> tuple[int, ...]:
    """A GGUF shape as llama.cpp's files list it: trailing 1s dropped (ggml_n_dims), e.g. a one-group Mamba2
    norm [d_inner, 1] is [d_inner] once llama.cpp has quantized the file."""
    while len(shape) > 1 and shape[-1] == 1:
        shape = shape[:-1]
    return shape


_REGISTRY: dict[str, ArchSpec] = {}


def register(spec: ArchSpec) -> ArchSpec:
    """Make ``spec`` the converter for each of its Hugging Face classes."""
    for cls in spec.hf_classes:
        _REGISTRY[cls] = spec
    return spec


def supported_architectures() -> dict[str, str]:
    """HF class name -> llama.cpp architecture name, for everything registered."""
    return {cls: spec.arch_name for cls, spec in sorted(_REGISTRY.items())}


def family_of(data: dict) -> tuple[ArchSpec, HFConfig]:
    """The family spec for a config.json's class and the config as that family reads it (its defaults
    applied). Raises UnsupportedArchitecture for a class no family converts; does not run ``spec.check``."""
    config = HFConfig(data)
    spec = spec_for(config.architecture)
    config = config.with_defaults(spec.defaults)
    return spec.variant(config) or spec, config


def spec_for(hf_class: str) -> ArchSpec:
    spec = _REGISTRY.get(hf_class)
    if spec is None:
        raise UnsupportedArchitecture(
            f"architecture {hf_class} is not supported",
            "supported: " + ", ".join(sorted(_REGISTRY)) + " (edgepack convert --list-architectures)")
    return spec
