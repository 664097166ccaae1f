"""A bounded, seeded fuzz over what strangers write: safetensors headers, config.json, tokenizer files, GGUF metadata
and bundle manifests. Each case runs the library function the CLI would call; the only acceptable outcomes are
success or an ``EdgepackError`` (the CLI's one-line error). Anything else would be a traceback. Every case also
runs under a time limit (no hang), the process's peak memory may not jump (no blow-up from a small file), and a
failed convert leaves nothing in its output folder.
"""

from __future__ import annotations

import json
import math
import random
import shutil
import signal
import struct
from contextlib import contextmanager
from pathlib import Path

import gguf
import pytest

from edgepack.bundle import verify_bundle, write_bundle
from edgepack.convert import convert
from edgepack.errors import EdgepackError
from edgepack.fit import describe_config, describe_gguf
from edgepack.loadcheck import check_loadable
from edgepack.quantize import inspect_source
from tests.integration.test_hostile_inputs import rewrite
from tests.support.tinymodels import synthetic_llama, tiny_llama_config

REPO = Path(__file__).resolve().parents[2]
VT = gguf.GGUFValueType
CASE_SECONDS = 20
MAX_PEAK_GROWTH_MB = 400
WEIRD = ["abc", "", [], [1, "x"], {}, {"a": 1}, None, float("nan"), float("inf"), -float("inf"), -1, 0, 1, 2**31,
         2**63, 10**30, 1e9, 3.5, True, False, "32000", [[[[]]]]]


class Hang(Exception):
    pass


@contextmanager
def time_limit(seconds: int):
    def alarm(*_):
        raise Hang(f"took longer than {seconds} s")
    old = signal.signal(signal.SIGALRM, alarm)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def _peak_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def run_case(label: str, fn) -> None:
    """``fn()`` must succeed or raise EdgepackError, in time, without a jump in peak memory."""
    before = _peak_rss_mb()
    try:
        with time_limit(CASE_SECONDS):
            fn()
    except EdgepackError as exc:
        assert "\n" not in str(exc), f"{label}: multi-line error {exc!r}"
    except Hang as exc:
        pytest.fail(f"{label}: {exc}")
    except Exception as exc:  # noqa: BLE001 - the point of the test
        raise AssertionError(f"{label}: {type(exc).__name__}: {exc} (a traceback for the user)") from exc
    grew = _peak_rss_mb() - before
    assert grew < MAX_PEAK_GROWTH_MB, f"{label}: peak memory grew by {grew:.0f} MB"


@pytest.fixture(scope="module")
def base_model(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("fuzz") / "model"
    config = tiny_llama_config(hidden_size=64, intermediate_size=128, num_hidden_layers=1, num_attention_heads=2,
                               num_key_value_heads=1, vocab_size=2048)
    synthetic_llama(folder, config)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(REPO / "examples/demo/model" / name, folder / name)
    return folder


@pytest.fixture(scope="module")
def base_gguf(base_model) -> Path:
    out = base_model.parent / "base.gguf"
    convert(base_model, out, outtype="f32")
    return out


def _mutate_json(rng: random.Random, data, depth: int = 0):
    """One random change somewhere in a JSON document (in place where possible); returns the document."""
    if isinstance(data, dict) and data and (depth > 3 or rng.random() < 0.6):
        key = rng.choice(sorted(data, key=str))
        data[key] = rng.choice(WEIRD)
        return data
    if isinstance(data, dict) and data:
        key = rng.choice(sorted(data, key=str))
        data[key] = _mutate_json(rng, data[key], depth + 1)
        return data
    if isinstance(data, list) and data:
        i = rng.randrange(len(data))
        data[i] = _mutate_json(rng, data[i], depth + 1) if rng.random() < 0.5 else rng.choice(WEIRD)
        return data
    return rng.choice(WEIRD)


def _convert_case(base: Path, work: Path, change) -> None:
    folder = work / "m"
    if folder.exists():
        shutil.rmtree(folder)
    shutil.copytree(base, folder)
    change(folder)
    out_dir = work / "out"
    shutil.rmtree(out_dir, ignore_errors=True)
    out_dir.mkdir()
    try:
        convert(folder, out_dir / "m.gguf", outtype="f32")
    finally:
        left = sorted(p.name for p in out_dir.iterdir())
        assert left in ([], ["m.gguf"]), f"left behind: {left}"


def test_fuzz_safetensors_headers(base_model, tmp_path):
    rng = random.Random(1)
    raw = (base_model / "model.safetensors").read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    header, data = json.loads(raw[8:8 + n]), raw[8 + n:]
    for i in range(60):
        doc = json.loads(json.dumps(header))
        kind = i % 6
        if kind == 0:
            doc = _mutate_json(rng, doc)
        elif kind == 1:  # deep nesting (written as text: json.dumps itself cannot nest that deep)
            depth = rng.choice([100, 5000, 50000])
            doc["__metadata__"] = "NEST"
        elif kind == 2:  # offsets out of range, negative, reversed, non-integers
            name = rng.choice(sorted(k for k in doc if k != "__metadata__"))
            doc[name]["data_offsets"] = rng.choice([[-5, 10], [0, 2**62], [10, 5], ["a", 3], [0], 7, [0, 1e300]])
        elif kind == 3:  # shapes
            name = rng.choice(sorted(k for k in doc if k != "__metadata__"))
            doc[name]["shape"] = rng.choice([[-1], [2**40, 2**40], ["x"], [[1]], [], None, [1.5]])
        elif kind == 4:
            name = rng.choice(sorted(k for k in doc if k != "__metadata__"))
            doc[name]["dtype"] = rng.choice(["F64", "Q4", 7, None, "", "F8_E4M3", "I64"])
        text = json.dumps(doc).encode()
        if kind == 1:
            text = text.replace(b'"NEST"', b"[" * depth + b"1" + b"]" * depth)
        length = len(text) if kind != 5 else rng.choice([0, 3, 2**40, len(text) + 10, len(raw)])

        def change(folder, text=text, length=length):
            (folder / "model.safetensors").write_bytes(struct.pack("<Q", length) + text + data)
        run_case(f"safetensors case {i}", lambda change=change: _convert_case(base_model, tmp_path, change))


def test_fuzz_config_json(base_model, tmp_path):
    rng = random.Random(2)
    base = json.loads((base_model / "config.json").read_text())
    keys = sorted(base) + ["rope_scaling", "head_dim", "rope_parameters", "text_config", "sliding_window",
                           "partial_rotary_factor", "layer_types"]
    for i in range(80):
        doc = json.loads(json.dumps(base))
        doc[rng.choice(keys)] = rng.choice(WEIRD)
        if i % 10 == 9:
            text = rng.choice(["{", "[]", "null", "\xff\xfe", '{"architectures": ["LlamaForCausalLM"]}'])
        else:
            text = json.dumps(doc)

        def change(folder, text=text):
            (folder / "config.json").write_text(text, encoding="utf-8", errors="surrogateescape")
        run_case(f"config case {i} ({text[:120]})",
                 lambda change=change: _convert_case(base_model, tmp_path, change))
        if isinstance(doc, dict) and i % 10 != 9:
            run_case(f"fit config case {i}", lambda doc=doc: describe_config(doc, "Q4_K_M"))


def test_fuzz_tokenizer_files(base_model, tmp_path):
    rng = random.Random(3)
    tok = json.loads((base_model / "tokenizer.json").read_text())
    cfg = json.loads((base_model / "tokenizer_config.json").read_text())
    for i in range(60):
        t, c = json.loads(json.dumps(tok)), json.loads(json.dumps(cfg))
        kind = i % 5
        if kind == 0:
            vocab = t["model"]["vocab"]
            vocab[rng.choice(sorted(vocab))] = rng.choice([-1, 10**9, "x", None, 2.5, 2047])
        elif kind == 1:
            t["model"]["merges"][rng.randrange(len(t["model"]["merges"]))] = rng.choice(
                [7, None, "a b c", ["a"], ["a", "b", "c"], "", "onlyone"])
        elif kind == 2:
            t["added_tokens"] = [{"id": rng.choice([10**9, -3, "7", None, 5]), "content": rng.choice(
                ["<x>", None, 5, ""]), "special": rng.choice([True, "yes", None])}]
        elif kind == 3:
            t = _mutate_json(rng, t)
        else:
            c = _mutate_json(rng, c)

        def change(folder, t=t, c=c):
            (folder / "tokenizer.json").write_text(json.dumps(t))
            (folder / "tokenizer_config.json").write_text(json.dumps(c))
        run_case(f"tokenizer case {i}", lambda change=change: _convert_case(base_model, tmp_path, change))


GGUF_VALUES = [("x", VT.STRING), (2**31, VT.UINT32), (2**32 - 1, VT.UINT32), (-1, VT.INT32), (0, VT.UINT32),
               (float("nan"), VT.FLOAT32), (float("inf"), VT.FLOAT32), ([1, 2, 3], VT.ARRAY, VT.INT32),
               (["a", "b"], VT.ARRAY, VT.STRING), (True, VT.BOOL), (2**40, VT.UINT64), (-7.5, VT.FLOAT64)]


@pytest.mark.slow
def test_fuzz_gguf_metadata(base_gguf, tmp_path):
    rng = random.Random(4)
    keys = sorted(k for k in gguf.GGUFReader(base_gguf).fields if not k.startswith("GGUF."))
    for i in range(40):
        key = rng.choice(keys + ["llama.expert_count", "llama.rope.scaling.type", "llama.attention.sliding_window"])
        value = rng.choice(GGUF_VALUES)
        path = rewrite(base_gguf, tmp_path / f"g{i % 4}.gguf", {key: value})
        for fn in (check_loadable, describe_gguf, inspect_source):
            run_case(f"GGUF case {i}: {key}={value[0]!r} in {fn.__name__}", lambda fn=fn, path=path: fn(path))


def test_fuzz_bundle_manifests(base_gguf, tmp_path):
    rng = random.Random(5)
    good = tmp_path / "good"
    write_bundle(good, model=base_gguf, quant="F32", profile={"name": "pixel-8"}, source={"name": "fuzz"})
    verify_bundle(good, load=False)
    manifest = json.loads((good / "manifest.json").read_text())
    for i in range(40):
        folder = tmp_path / "b"
        shutil.rmtree(folder, ignore_errors=True)
        shutil.copytree(good, folder)
        doc = _mutate_json(rng, json.loads(json.dumps(manifest)))
        text = json.dumps(doc) if i % 8 else rng.choice(["{", "[1]", "\ud800", "null"])
        (folder / "manifest.json").write_text(text, encoding="utf-8", errors="surrogatepass")
        run_case(f"manifest case {i}", lambda folder=folder: verify_bundle(folder, load=False))
    assert math.isfinite(_peak_rss_mb())


def test_fuzz_model_cards_and_shard_index(base_model, tmp_path):
    """README.md front matter (YAML a stranger wrote) and model.safetensors.index.json values."""
    rng = random.Random(6)
    cards = ["license: [unclosed", "license: !!python/object/apply:os.system ['id']", "license: {a: 1}",
             "tags: [[1]]", "license: " + "x" * 100_000, "base_model: 7", "datasets: {x: y}", "language: [1, 2]",
             "license: apache-2.0\ntags: [a, b]", "&a [*a]", "license: &x [*x]", "? [a]\n: b", ""]
    for i in range(30):
        card = rng.choice(cards)
        raw = ("---\n" + card + "\n---\nbody\n").encode() if i % 7 else b"---\nlicense: \xff\xfe\n---\n"

        def change(folder, raw=raw):
            (folder / "README.md").write_bytes(raw)
        run_case(f"model card case {i} ({card[:40]!r})", lambda change=change: _convert_case(base_model, tmp_path,
                                                                                           change))
    names = sorted(json.loads((base_model / "config.json").read_text()) and
                   list(__import__("safetensors").safe_open(base_model / "model.safetensors", "np").keys()))
    for i in range(20):
        value = rng.choice([5, None, "/etc/passwd", "../model.safetensors", "", [], "model.safetensors"])
        index = {"metadata": rng.choice([{}, "x", None]), "weight_map": {n: value for n in names}}

        def change(folder, index=index):
            (folder / "model.safetensors.index.json").write_text(json.dumps(index))
        run_case(f"index case {i} ({value!r})", lambda change=change: _convert_case(base_model, tmp_path, change))


def test_fuzz_adapter_configs(tmp_path):
    from edgepack.adapters import check_compatibility

    rng = random.Random(7)
    demo = REPO / "examples/demo"
    base = json.loads((demo / "adapter/adapter_config.json").read_text())
    for i in range(30):
        folder = tmp_path / "adapter"
        shutil.rmtree(folder, ignore_errors=True)
        shutil.copytree(demo / "adapter", folder)
        doc = _mutate_json(rng, json.loads(json.dumps(base)))
        (folder / "adapter_config.json").write_text(json.dumps(doc) if i % 9 else "{\"r\": NaN}")
        run_case(f"adapter config case {i}", lambda folder=folder: check_compatibility(folder, demo / "model"))
