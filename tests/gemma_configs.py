"""config.json structures of the Gemma models phones run, which tests/fixtures/configs does not hold.

Each dict is the model's published config.json in the shape transformers saved it (keys it leaves out are its
config class's defaults, which the converter must supply itself), with the sizes as published; family_cases
shrinks them. Sources: the model repositories' config.json files as quoted in public code and transformers'
configuration classes (docstrings and defaults).
"""

# google/gemma-3-4b-it (transformers 4.50): text_config names only what differs from Gemma3TextConfig's
# defaults: 8 query heads, 4 KV heads, head_dim 256, query_pre_attn_scalar 256, 262208-token vocabulary, every
# 6th layer global, rope bases 1e6 (global, here linearly scaled x8) and 1e4 (local) all come from there.
GEMMA3_4B_IT = {
    "architectures": ["Gemma3ForConditionalGeneration"],
    "boi_token_index": 255999,
    "eoi_token_index": 256000,
    "eos_token_id": [1, 106],
    "image_token_index": 262144,
    "initializer_range": 0.02,
    "mm_tokens_per_image": 256,
    "model_type": "gemma3",
    "text_config": {
        "hidden_size": 2560,
        "intermediate_size": 10240,
        "model_type": "gemma3_text",
        "num_hidden_layers": 34,
        "rope_scaling": {"factor": 8.0, "rope_type": "linear"},
        "sliding_window": 1024,
    },
    "torch_dtype": "bfloat16",
    "transformers_version": "4.50.0.dev0",
    "vision_config": {
        "hidden_size": 1152,
        "image_size": 896,
        "intermediate_size": 4304,
        "model_type": "siglip_vision_model",
        "num_attention_heads": 16,
        "num_hidden_layers": 27,
        "patch_size": 14,
        "vision_use_head": False,
    },
}

# A SigLIP tower of one tiny layer: the converter drops it, transformers needs one to build the model.
TINY_SIGLIP = {"hidden_size": 32, "image_size": 28, "intermediate_size": 64, "num_attention_heads": 2,
               "num_hidden_layers": 1, "patch_size": 14}
