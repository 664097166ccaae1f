"""Outputs that are not regular files, for the stages that run llama.cpp (issue 13, finding 5): quantize, the
report and adapter conversion refuse a named pipe in place of their output and leave it as it was. (The rest of
the output checks, which need no llama.cpp: tests/unit/test_safety.py.)"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from edgepack.convert import convert
from edgepack.errors import OutputError
from tests.support.tinymodels import real_config

ROOT = Path(__file__).resolve().parents[2]
DEMO_MODEL = ROOT / "examples" / "demo" / "model"


def test_quantize_report_and_adapter_refuse_a_pipe(tmp_path):
    from edgepack.adapters import convert_adapter
    from edgepack.quantize import inspect_source, quantize
    from edgepack.fit import Quality, Variant, describe_config, fit
    from edgepack.profiles import get_profile
    from edgepack.report import write_report

    src = tmp_path / "demo-F16.gguf"
    convert(DEMO_MODEL, src, outtype="f16")
    out = tmp_path / "q"
    out.mkdir()
    target = out / f"{inspect_source(src).name}-Q8_0.gguf"
    os.mkfifo(target)
    with pytest.raises(OutputError, match="named pipe"):
        quantize(src, ["Q8_0"], out, force=True)
    assert target.is_fifo() and len(list(out.iterdir())) == 1

    rep = tmp_path / "rep"
    rep.mkdir()
    os.mkfifo(rep / "report.html")
    with pytest.raises(OutputError, match="named pipe"):
        write_report({"fit": fit([Variant(describe_config(real_config("llama3_2_1b"), "Q8_0", "m"), Quality())],
                                 [get_profile("pixel-8")], n_ctx=512).to_dict()}, rep)
    assert (rep / "report.html").is_fifo()

    os.mkfifo(tmp_path / "lora.gguf")
    with pytest.raises(OutputError, match="named pipe"):
        convert_adapter(ROOT / "examples" / "demo" / "adapter", DEMO_MODEL, tmp_path / "lora.gguf", force=True)
    assert (tmp_path / "lora.gguf").is_fifo()
