"""PEFT LoRA adapters: check they belong to a base, convert them to GGUF adapters, or merge them into the base.

``check_compatibility(peft_dir, base)`` reads adapter_config.json and the adapter's safetensors headers and
the base (a Hugging Face folder, a Hub repo id, or a GGUF) and reports every reason the pair does not fit:
architecture, layer count, hidden sizes, target modules, trained embeddings, features edgepack cannot carry
exactly (DoRA, trained biases, ...), and whether the base named in adapter_config.json is this base.
``convert_adapter`` writes llama.cpp's adapter format (the facts are those of llama.cpp's
convert_lora_to_gguf.py and src/llama-adapter.cpp):

* ``general.type = adapter``, ``adapter.type = lora``, ``adapter.lora.alpha`` and ``general.architecture``
  of the base; llama.cpp applies ``scale * alpha / rank`` with rank read from each pair's tensors (or plain
  ``scale`` when alpha is 0).
* one ``<base GGUF tensor name>.lora_a`` (HF shape ``(r, in)``) and ``.lora_b`` (``(out, r)``) per target.
* the base family's transform of the target weight applies to ``B·A``; for a row permutation (the Llama Q/K
  rope order) that is the same permutation of ``lora_b``'s rows. Transforms are found through the family's
  ``ArchSpec`` and checked to be row permutations by probing them, so no family knowledge lives here.
* scalings other than ``alpha/r`` (rsLoRA's ``alpha/sqrt(r)``, ``alpha_pattern``/``rank_pattern``) are folded
  into ``lora_b`` so that llama.cpp's ``alpha/r`` gives PEFT's scaling exactly.

``merge_adapter`` writes the base's safetensors with ``W + scaling·B·A`` (one tensor at a time) and copies
the config and tokenizer files, so the merged folder converts and quantizes like any other model.

Modules by role: ``peft`` (reading the adapter), ``base`` (reading the base), ``check`` (whether they fit),
``write`` (the GGUF adapter), ``merge`` (into the base's safetensors), ``results`` (what they return).
"""

from .check import check_compatibility
from .merge import convert_merged, merge_adapter
from .peft import ADAPTER_CONFIG, ADAPTER_OUTTYPES, ADAPTER_WEIGHTS, LORA_TENSOR_KINDS
from .results import AdapterResult, CompatibilityReport, MergeResult
from .write import convert_adapter

__all__ = ["ADAPTER_CONFIG", "ADAPTER_OUTTYPES", "ADAPTER_WEIGHTS", "AdapterResult", "CompatibilityReport",
           "LORA_TENSOR_KINDS", "MergeResult", "check_compatibility", "convert_adapter", "convert_merged",
           "merge_adapter"]
