"""edgepack's tests, in tiers a contributor can run on their own (README, "Tests"):

tests/unit         no torch, no llama.cpp: seconds (tests/unit/conftest.py enforces it)
tests/integration  the stages run for real: llama.cpp loads, quantizes, measures; builds, installs, the loopback Hub
tests/fidelity     edgepack's GGUFs against the reference: logits vs transformers, token ids vs the model's tokenizer
tests/support      the helpers they share (tiny seeded models, family cases, the loopback Hub), also used by
                   benchmarks/ and scripts/ (run those from the repository root as `python -m benchmarks.NAME`)
"""
