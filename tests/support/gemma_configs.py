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

# google/gemma-3-4b-it's preprocessor_config.json (Gemma3ImageProcessor): resize to 896x896 bilinearly
# (resample 2), x1/255, normalise with mean = std = 0.5, no pan-and-scan; 256 tokens per image.
GEMMA3_4B_IT_PREPROCESSOR = {
    "do_convert_rgb": None, "do_normalize": True, "do_pan_and_scan": None, "do_rescale": True, "do_resize": True,
    "image_mean": [0.5, 0.5, 0.5], "image_processor_type": "Gemma3ImageProcessor", "image_seq_length": 256,
    "image_std": [0.5, 0.5, 0.5], "pan_and_scan_max_num_crops": None, "pan_and_scan_min_crop_size": None,
    "pan_and_scan_min_ratio_to_activate": None, "processor_class": "Gemma3Processor", "resample": 2,
    "rescale_factor": 0.00392156862745098, "size": {"height": 896, "width": 896},
}

# A SigLIP tower of one tiny layer: the converter drops it, transformers needs one to build the model.
TINY_SIGLIP = {"hidden_size": 32, "image_size": 28, "intermediate_size": 64, "num_attention_heads": 2,
               "num_hidden_layers": 1, "patch_size": 14}

# google/gemma-4-E2B-it: 35 layers (4 local + 1 global, repeated), the last 20 reusing the K/V of layers 13
# (local) and 14 (global); local heads of 256, global of 512 with proportional rope over a quarter of them;
# 256-wide per-layer embeddings; the shared layers' FFN doubled; logits soft-capped at 30.
GEMMA4_E2B_IT = {
    "architectures": ["Gemma4ForConditionalGeneration"],
    "model_type": "gemma4",
    "tie_word_embeddings": True,
    "image_token_id": 258880,
    "audio_token_id": 258881,
    "video_token_id": 258884,
    "boi_token_id": 255999,
    "eoi_token_id": 258882,
    "boa_token_id": 256000,
    "eoa_token_id": 258883,
    "eos_token_id": [1, 106],
    "text_config": {
        "model_type": "gemma4_text",
        "hidden_size": 1536,
        "num_hidden_layers": 35,
        "num_attention_heads": 8,
        "num_key_value_heads": 1,
        "head_dim": 256,
        "global_head_dim": 512,
        "num_global_key_value_heads": None,
        "attention_k_eq_v": False,
        "sliding_window": 512,
        "vocab_size": 262144,
        "vocab_size_per_layer_input": 262144,
        "hidden_size_per_layer_input": 256,
        "num_kv_shared_layers": 20,
        "use_double_wide_mlp": True,
        "intermediate_size": 6144,
        "max_position_embeddings": 131072,
        "rms_norm_eps": 1e-6,
        "hidden_activation": "gelu_pytorch_tanh",
        "final_logit_softcapping": 30.0,
        "pad_token_id": 0,
        "bos_token_id": 2,
        "eos_token_id": 1,
        "layer_types": (["sliding_attention"] * 4 + ["full_attention"]) * 7,
        "rope_parameters": {
            "full_attention": {"partial_rotary_factor": 0.25, "rope_theta": 1000000.0, "rope_type": "proportional"},
            "sliding_attention": {"rope_theta": 10000.0, "rope_type": "default"},
        },
    },
    "vision_config": {"model_type": "gemma4_vision"},
    "audio_config": {"model_type": "gemma4_audio"},
}

# A Gemma 4 vision tower of one tiny layer (dropped by the converter; transformers needs one to build the model).
TINY_GEMMA4_VISION = {"model_type": "gemma4_vision", "hidden_size": 32, "intermediate_size": 64,
                      "num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 2, "head_dim": 16}

# google/gemma-4-31B-it's text model: no per-layer embeddings (0), no KV sharing, 16 KV heads on local layers
# and 4 on global ones, whose keys are their values too (attention_k_eq_v: no v_proj); 5 local + 1 global.
GEMMA4_31B_TEXT = {
    "architectures": ["Gemma4ForCausalLM"],
    "model_type": "gemma4_text",
    "hidden_size": 5376,
    "num_hidden_layers": 60,
    "intermediate_size": 21504,
    "num_attention_heads": 32,
    "num_key_value_heads": 16,
    "num_global_key_value_heads": 4,
    "head_dim": 256,
    "global_head_dim": 512,
    "vocab_size": 262144,
    "rms_norm_eps": 1e-6,
    "max_position_embeddings": 131072,
    "sliding_window": 1024,
    "final_logit_softcapping": 30.0,
    "use_double_wide_mlp": False,
    "num_kv_shared_layers": 0,
    "hidden_size_per_layer_input": 0,
    "attention_k_eq_v": True,
    "tie_word_embeddings": True,
    "layer_types": (["sliding_attention"] * 5 + ["full_attention"]) * 10,
    "rope_parameters": {
        "full_attention": {"partial_rotary_factor": 0.25, "rope_theta": 1000000.0, "rope_type": "proportional"},
        "sliding_attention": {"rope_theta": 10000.0, "rope_type": "default"},
    },
}

# google/gemma-4-26B-A4B-it's text model: the 31B's layout (5 local + 1 global, attention_k_eq_v, no per-layer
# embeddings) on 30 layers of 2816, 8 KV heads local and 2 global, and the MoE block on every layer: the dense MLP
# (2112) beside 128 routed GEGLU experts of 704, 8 per token.
GEMMA4_26B_A4B_TEXT = dict(GEMMA4_31B_TEXT, **{
    "hidden_size": 2816, "num_hidden_layers": 30, "intermediate_size": 2112, "num_attention_heads": 16,
    "num_key_value_heads": 8, "num_global_key_value_heads": 2, "max_position_embeddings": 262144,
    "layer_types": (["sliding_attention"] * 5 + ["full_attention"]) * 5,
    "enable_moe_block": True, "num_experts": 128, "top_k_experts": 8, "moe_intermediate_size": 704,
})

# google/gemma-3n-E2B-it's text model: 30 layers (4 local + 1 global), the last 10 reusing layers 18 (local) and
# 19 (global)'s K/V; AltUp over 4 streams, LAuReL of rank 64, 256-wide per-layer embeddings over the first 262144
# tokens of a 262400-token vocabulary; activation sparsity 0.95 on the first 10 layers.
GEMMA3N_E2B_TEXT = {
    "architectures": ["Gemma3nForCausalLM"],
    "model_type": "gemma3n_text",
    "hidden_size": 2048,
    "intermediate_size": [8192] * 30,
    "num_hidden_layers": 30,
    "num_attention_heads": 8,
    "num_key_value_heads": 2,
    "head_dim": 256,
    "vocab_size": 262400,
    "vocab_size_per_layer_input": 262144,
    "hidden_size_per_layer_input": 256,
    "laurel_rank": 64,
    "altup_num_inputs": 4,
    "altup_active_idx": 0,
    "altup_coef_clip": 120.0,
    "altup_correct_scale": True,
    "num_kv_shared_layers": 10,
    "activation_sparsity_pattern": [0.95] * 10 + [0.0] * 20,
    "sliding_window": 512,
    "max_position_embeddings": 32768,
    "rope_theta": 1000000.0,
    "rope_local_base_freq": 10000.0,
    "final_logit_softcapping": 30.0,
    "hidden_activation": "gelu_pytorch_tanh",
    "rms_norm_eps": 1e-6,
    "layer_types": ["full_attention" if (i + 1) % 5 == 0 else "sliding_attention" for i in range(30)],
}
