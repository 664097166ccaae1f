"""Per-family agreement table: every architecture family's tiny checkpoint converted and run in llama.cpp
against transformers (logits) and Hugging Face tokenizers (token ids).

    .venv/bin/python benchmarks/families.py [CASE ...]      (all cases, or only those named)

Columns: F32 max|Δ| and top-1 against transformers computing as llama.cpp does by design (ggml's FP16-table
GELU for the GELU families; for F16 also weights and matmul inputs rounded to half), the same against plain
transformers, and the share of the 83 multilingual conformance texts whose ids are identical. Cases and
tokenizers are those of tests/test_families.py (tests/family_cases.py). Needs torch/transformers (test extra).
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from family_cases import (CASES, build_tokenizer, case_config, conformance_texts, half_precision_matmuls,  # noqa: E402
                          hf_encoder, prompt_ids, table_gelu)
from tinymodels import build_model, compare, hf_logits, llama_cpp_logits  # noqa: E402

from edgepack.convert import convert  # noqa: E402


def token_agreement(folder: Path, work: Path) -> tuple[int, int]:
    import llama_cpp

    convert(folder, work / "vocab.gguf", vocab_only=True, force=True)
    llm = llama_cpp.Llama(str(work / "vocab.gguf"), vocab_only=True, verbose=False)
    truth = hf_encoder(folder)
    texts = conformance_texts()
    same = sum(llm.tokenize(t.encode(), add_bos=False, special=False) == truth(t) for t in texts)
    return same, len(texts)


def main() -> None:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        tokenizers: dict[str, Path] = {}
        for case in [c for c in CASES if not sys.argv[1:] or c.name in sys.argv[1:]]:
            if case.tokenizer not in tokenizers:
                tokenizers[case.tokenizer] = build_tokenizer(case.tokenizer, root / f"tok-{case.tokenizer}")
            tok = tokenizers[case.tokenizer]
            folder = root / case.name
            config = case_config(case, tok)
            model = build_model(config, folder / "model")
            for f in tok.iterdir():
                shutil.copy(f, folder / "model" / f.name)
            ids = prompt_ids(case, folder / "model")
            plain = hf_logits(model, ids)
            if case.gelu_table:
                table_gelu(model)
            ref32 = hf_logits(model, ids) if case.gelu_table else plain
            half_precision_matmuls(model)
            ref16 = hf_logits(model, ids)
            convert(folder / "model", folder / "f32.gguf", outtype="f32")
            convert(folder / "model", folder / "f16.gguf", outtype="f16")
            got32, got16 = llama_cpp_logits(folder / "f32.gguf", ids), llama_cpp_logits(folder / "f16.gguf", ids)
            same, total = token_agreement(folder / "model", folder)
            rows.append((case.name, config["architectures"][0], case.tokenizer, compare(ref32, got32),
                         compare(plain, got32), compare(ref16, got16), compare(plain, got16), same, total,
                         case.gelu_table))
    print("| case | HF class | tokenizer | F32 max\\|Δ\\| | F32 top-1 | F32 vs plain | F16 max\\|Δ\\| | F16 top-1 "
          "| F16 vs plain (top-1) | token ids identical |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, cls, tok, (a32, t32), (p32, _), (a16, t16), (p16, pt16), same, total, gelu in rows:
        mark = " ¹" if gelu else ""
        print(f"| {name}{mark} | {cls} | {tok} | {a32:.1e} | {t32:.0%} | {p32:.1e} | {a16:.1e} | {t16:.0%} "
              f"| {p16:.1e} ({pt16:.0%}) | {same}/{total} |")
    print("\n¹ GELU family: the reference runs ggml's FP16-table GELU (llama.cpp's kernel by design).")
    print(json.dumps({"sequence_tokens": len(ids)}))


if __name__ == "__main__":
    main()
