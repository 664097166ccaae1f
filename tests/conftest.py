"""Session guards, set before any test module imports huggingface_hub (which reads its env vars once):

* HF_ENDPOINT points at a closed local port, so a test that forgets to start the loopback Hub
  (tests/support/hubserver.py) fails at once instead of reaching the real Hub;
* HF_HOME is a fresh temp folder, so no test reads or fills the user's cache (removed when the session ends);
* HF_HUB_OFFLINE is cleared: the Hub tests need the loopback server online, and offline cases set it themselves;
* GITHUB_ACTIONS and GITHUB_STEP_SUMMARY are cleared: when the suite itself runs in GitHub Actions, the builds
  under test must not annotate or summarise its job (the CI-output test sets them itself).
"""

import os
import shutil
import tempfile

_HF_HOME = tempfile.mkdtemp(prefix="edgepack-tests-hf-home-")
os.environ["HF_ENDPOINT"] = "http://127.0.0.1:9"
os.environ["HF_HOME"] = _HF_HOME
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
for _var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_TOKEN", "HF_HUB_CACHE", "GITHUB_ACTIONS",
             "GITHUB_STEP_SUMMARY"):
    os.environ.pop(_var, None)


def pytest_unconfigure(config):
    """The session's HF_HOME goes with it (a run interrupted by Ctrl-C too): one left per run filled /tmp."""
    shutil.rmtree(_HF_HOME, ignore_errors=True)


# --- the architecture families' tiny checkpoints (tests/support/family_cases.py), shared by the test modules ---

import pytest  # noqa: E402

from tests.support.family_cases import (CASES, as_llama_cpp_computes, build_tokenizer, case_config,  # noqa: E402
                                        half_precision_matmuls, prompt_ids)
from tests.support.tinymodels import build_model, hf_logits  # noqa: E402


@pytest.fixture(scope="session")
def tokenizer_folders(tmp_path_factory):
    """Tokenizers are built once per session (training the family-style ones takes a few seconds)."""
    cache: dict = {}

    def get(name: str):
        if name not in cache:
            cache[name] = build_tokenizer(name, tmp_path_factory.mktemp(f"tok-{name}"))
        return cache[name]
    return get


# One family case stays in the fast tier (pytest -m "not slow"); every case runs in the full one.
FAST_CASES = {"qwen3-0.6b"}


@pytest.fixture(scope="session", ids=lambda c: c.name,
                params=[c if c.name in FAST_CASES else pytest.param(c, marks=pytest.mark.slow) for c in CASES])
def built(request, tmp_path_factory, tokenizer_folders):
    """The case, its folder, token ids, and transformers' logits: as trained (``plain``), and computing as
    llama.cpp does by design (``f32``: ggml's FP16-table GELU where the family uses GELU; ``f16``: also
    weights and matmul inputs rounded to half, as ggml's CPU F16 matmul)."""
    case = request.param
    folder = tmp_path_factory.mktemp(case.name)
    tok = tokenizer_folders(case.tokenizer)
    model_dir = folder / "model"
    model = build_model(case_config(case, tok), model_dir, unscaled_attention=case.unscaled_attention,
                        stds=case.init_std, seed=case.seed)
    for f in tok.iterdir():
        (model_dir / f.name).write_bytes(f.read_bytes())
    ids = prompt_ids(case, model_dir)
    references = {"plain": hf_logits(model, ids)}
    references["f32"] = hf_logits(model, ids) if as_llama_cpp_computes(case, model) else references["plain"]
    half_precision_matmuls(model)
    references["f16"] = hf_logits(model, ids)
    return case, folder, ids, references
