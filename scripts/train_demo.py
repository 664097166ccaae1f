"""Train the built-in demo model and its LoRA adapter from War and Peace (public domain), on the CPU.

    .venv/bin/python -m scripts.train_demo            # writes examples/demo/model/ and examples/demo/adapter/

What it makes (checked in, because they are data the demo build needs offline):

* a byte-level BPE tokenizer (2048 tokens, GPT-2 pre-tokenizer regex, ``<s>``/``</s>`` specials, a
  post-processor that adds ``<s>``, a small chat template) trained with ``tokenizers``;
* a tiny Llama (hidden 256 so every K-quant applies, 4 layers, 4 heads, 2 KV heads, tied embeddings,
  context 256) trained on the narrative text, saved as BF16 safetensors;
* a rank-8 LoRA adapter (peft; q/k/v/o projections) trained on the dialogue only (the quoted speech);
* ``examples/demo/TRAINING.md``: the held-out perplexities before and after, so the training is visible.

Everything is seeded and runs single-threaded, so a re-run gives the same numbers on the same torch build.
Needs the test extra (torch, transformers, tokenizers, peft); edgepack itself never imports torch.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import re
import time
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

from tests.support.tinymodels import TEXTS  # the fixtures in tests/fixtures

ROOT = Path(__file__).resolve().parent.parent

TEXT = TEXTS / "war-and-peace.txt"
OUT = ROOT / "examples" / "demo"

VOCAB_SIZE = 2048
SEQ_LEN = 128
CTX = 256
CHAT_TEMPLATE = (
    "{% for message in messages %}{{ message['role'] }}: {{ message['content'] }}</s>\n{% endfor %}"
    "{% if add_generation_prompt %}assistant: {% endif %}"
)
QUOTE = re.compile(r'"[^"]{8,}?"')


def paragraphs(text: str) -> list[str]:
    """The book's hard-wrapped paragraphs, each joined into one line."""
    text = text.replace("\r\n", "\n")
    return [" ".join(p.split()) for p in re.split(r"\n\s*\n", text) if p.strip()]


def write_eval_text(held_out: list[str], path: Path, n_chars: int = 12000) -> None:
    """The start of the held-out paragraphs: the text the demo build measures perplexity and KLD on."""
    out, size = [], 0
    for p in held_out:
        if size + len(p) > n_chars:
            break
        out.append(p)
        size += len(p) + 2
    path.write_text("\n\n".join(out) + "\n", encoding="utf-8")


def train_tokenizer(texts: list[str]) -> Tokenizer:
    tok = Tokenizer(models.BPE())
    # ByteLevel with its built-in regex is GPT-2's pre-tokenizer: llama.cpp implements it as "gpt-2".
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB_SIZE, special_tokens=["<s>", "</s>"], min_frequency=2,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    # (pair: "<s> $A $B", a form gguf-py reads without warnings; pairs play no part in a causal LM)
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A $B",
                                                       special_tokens=[("<s>", 0), ("</s>", 1)])
    return tok


def save_tokenizer(tok: Tokenizer, folder: Path) -> None:
    tok.save(str(folder / "tokenizer.json"))
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<s>", "eos_token": "</s>",
        "add_bos_token": True, "add_eos_token": False, "model_max_length": CTX, "clean_up_tokenization_spaces": False,
        "chat_template": CHAT_TEMPLATE,
        "added_tokens_decoder": {
            "0": {"content": "<s>", "special": True, "lstrip": False, "rstrip": False, "normalized": False,
                  "single_word": False},
            "1": {"content": "</s>", "special": True, "lstrip": False, "rstrip": False, "normalized": False,
                  "single_word": False},
        },
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")


def encode_stream(tok: Tokenizer, texts: list[str]) -> torch.Tensor:
    """One long token stream: <s> paragraph </s> <s> paragraph </s> ..."""
    ids: list[int] = []
    for enc in tok.encode_batch(texts):
        ids.extend(enc.ids)  # starts with <s> (the post-processor)
        ids.append(1)
    return torch.tensor(ids, dtype=torch.long)


def batches(stream: torch.Tensor, batch: int, steps: int, seed: int):
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        starts = torch.randint(0, len(stream) - SEQ_LEN - 1, (batch,), generator=gen)
        yield torch.stack([stream[s:s + SEQ_LEN] for s in starts.tolist()])


@torch.no_grad()
def perplexity(model, stream: torch.Tensor, max_windows: int = 48) -> float:
    """exp(mean next-token loss) over consecutive non-overlapping windows of the held-out stream."""
    model.eval()
    n = min(max_windows, (len(stream) - 1) // SEQ_LEN)
    windows = torch.stack([stream[i * SEQ_LEN:(i + 1) * SEQ_LEN] for i in range(n)])
    total = 0.0
    for chunk in windows.split(16):
        total += model(input_ids=chunk, labels=chunk).loss.item() * len(chunk)
    model.train()
    return math.exp(total / n)


def train(model, params, stream: torch.Tensor, steps: int, batch: int, lr: float, seed: int, label: str) -> None:
    opt = torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.95), weight_decay=0.01)
    warmup = max(1, steps // 20)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warmup) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * s / steps))))
    started = time.monotonic()
    model.train()
    for step, x in enumerate(batches(stream, batch, steps, seed)):
        loss = model(input_ids=x, labels=x).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        schedule.step()
        opt.zero_grad(set_to_none=True)
        if step % 25 == 0 or step == steps - 1:
            print(f"{label} step {step + 1}/{steps} loss {loss.item():.3f} ({time.monotonic() - started:.0f}s)",
                  flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=260, help="base model optimiser steps")
    parser.add_argument("--adapter-steps", type=int, default=70, help="LoRA optimiser steps")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()

    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    random.seed(0)
    started = time.monotonic()

    paras = paragraphs(TEXT.read_text(encoding="utf-8"))
    n_train = int(len(paras) * 0.95)
    train_paras, held_out = paras[:n_train], paras[n_train:]
    # The adapter's slice: only the quoted speech.
    train_dialogue = [q.strip('"') for p in train_paras for q in QUOTE.findall(p)]
    held_dialogue = [q.strip('"') for p in held_out for q in QUOTE.findall(p)]

    model_dir, adapter_dir = args.out / "model", args.out / "adapter"
    model_dir.mkdir(parents=True, exist_ok=True)
    adapter_dir.mkdir(parents=True, exist_ok=True)
    write_eval_text(held_out, args.out / "eval.txt")

    tok = train_tokenizer(train_paras)
    save_tokenizer(tok, model_dir)
    text_train, text_eval = encode_stream(tok, train_paras), encode_stream(tok, held_out)
    dia_train, dia_eval = encode_stream(tok, train_dialogue), encode_stream(tok, held_dialogue)
    print(f"tokenizer: {tok.get_vocab_size()} tokens; train {len(text_train):,} tokens, held-out {len(text_eval):,}; "
          f"dialogue train {len(dia_train):,}, held-out {len(dia_eval):,}", flush=True)

    config = LlamaConfig(vocab_size=tok.get_vocab_size(), hidden_size=256, intermediate_size=512,
                         num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=CTX, rms_norm_eps=1e-5, rope_theta=10000.0,
                         tie_word_embeddings=True, bos_token_id=0, eos_token_id=1, hidden_act="silu",
                         attention_bias=False, mlp_bias=False)
    model = LlamaForCausalLM(config)
    ppl = {"text_untrained": perplexity(model, text_eval)}
    train(model, list(model.parameters()), text_train, args.steps, 16, 3e-3, 1, "base")
    # Round to BF16 (what is checked in) before measuring and before training the adapter against it.
    model = model.to(torch.bfloat16).to(torch.float32)
    ppl["text_trained"] = perplexity(model, text_eval)
    ppl["dialogue_base"] = perplexity(model, dia_eval)
    model.to(torch.bfloat16).save_pretrained(model_dir, safe_serialization=True)
    model = model.to(torch.float32)
    (model_dir / "README.md").write_text(
        "---\nlicense: apache-2.0\n---\n# edgepack demo model\n\nA tiny Llama trained by `scripts/train_demo.py` "
        "on War and Peace (Tolstoy, public domain).\n")

    lora = LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, bias="none", task_type="CAUSAL_LM",
                      target_modules=["q_proj", "k_proj", "v_proj", "o_proj"])
    peft_model = get_peft_model(model, lora)
    trainable = [p for p in peft_model.parameters() if p.requires_grad]
    train(peft_model, trainable, dia_train, args.adapter_steps, 16, 2e-3, 2, "adapter")
    ppl["dialogue_adapter"] = perplexity(peft_model, dia_eval)
    peft_model.save_pretrained(adapter_dir, safe_serialization=True)
    cfg_path = adapter_dir / "adapter_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["base_model_name_or_path"] = "examples/demo/model"  # a relative, machine-independent name
    cfg["target_modules"] = sorted(cfg["target_modules"])  # peft writes a set: fix the order
    cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    for stale in ("README.md",):  # peft writes a model-card template; the demo's story is in TRAINING.md
        (adapter_dir / stale).unlink(missing_ok=True)

    seconds = time.monotonic() - started
    print(json.dumps(ppl, indent=2))
    (args.out / "TRAINING.md").write_text(
        "# How the demo model was trained\n\n"
        f"`.venv/bin/python -m scripts.train_demo --steps {args.steps} --adapter-steps {args.adapter_steps} "
        f"--threads {args.threads}` ({seconds:.0f} s on this machine, torch {torch.__version__}).\n\n"
        "Text: War and Peace (public domain), paragraphs re-flowed; the first 95% train, the last 5% are held "
        "out. The adapter trains on the quoted speech only.\n\n"
        "| held-out perplexity | value |\n|---|---|\n"
        f"| narrative, untrained model | {ppl['text_untrained']:.1f} |\n"
        f"| narrative, trained model | {ppl['text_trained']:.2f} |\n"
        f"| dialogue, trained model | {ppl['dialogue_base']:.2f} |\n"
        f"| dialogue, trained model + LoRA adapter | {ppl['dialogue_adapter']:.2f} |\n\n"
        f"Model: Llama, hidden 256, 4 layers, 4 heads (2 KV), FFN 512, vocab {tok.get_vocab_size()}, context "
        f"{CTX}, tied embeddings, BF16. Adapter: LoRA rank 8, alpha 16, q/k/v/o projections.\n")
    (args.out / "training.json").write_text(json.dumps({k: round(v, 4) for k, v in ppl.items()}, indent=2,
                                                       sort_keys=True) + "\n")


if __name__ == "__main__":
    main()
