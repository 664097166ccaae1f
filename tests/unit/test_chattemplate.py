"""Chat templates are audited before they ship: published ones pass and render; escape payloads are refused."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from edgepack import chattemplate
from edgepack.chattemplate import audit, audit_all
from edgepack.errors import TokenizerError
from edgepack.limits import MAX_CHAT_TEMPLATE_BYTES
from tests.support.tinymodels import TOKENIZERS

REPO = Path(__file__).resolve().parents[2]


def _published() -> dict[str, str]:
    out = {"tinyllama": (TOKENIZERS / "tinyllama-chat-resaved-Dheena731/chat_template.jinja").read_text()}
    for name, path in [("gemma", "gemma-ortx-configonly"), ("qwen2.5", "qwen2.5-ortx-configonly"),
                       ("qwen3", "qwen3-ortx-configonly"), ("phi3", "phi3-mini-ortx")]:
        out[name] = json.loads((TOKENIZERS / path / "tokenizer_config.json").read_text())["chat_template"]
    return out


@pytest.mark.parametrize("name", sorted(_published()))
def test_published_templates_pass_and_render(name):
    result = audit(_published()[name])
    assert result.verdict == "passed" and result.rendered and not result.findings


ESCAPES = {
    "mro walk": "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "template reference": "{{ self._TemplateReference__context }}",
    "lipsum globals": "{{ lipsum.__globals__['os'].popen('id').read() }}",
    "cycler init": "{{ cycler.__init__.__globals__.os }}",
    "computed attr": "{{ messages|attr('__cla' ~ 'ss__') }}",
    "item access": "{{ messages['__class__'] }}",
    "include": "{% include 'secrets.txt' %}",
    "import": "{% import 'macros' as m %}{{ m.x() }}",
}


@pytest.mark.parametrize("name", sorted(ESCAPES))
def test_escape_constructs_are_refused_unless_accepted(name):
    template = "{% for m in messages %}{{ m['content'] }}{% endfor %}" + ESCAPES[name]
    with pytest.raises(TokenizerError) as err:
        audit(template)
    assert "reach outside" in err.value.message and "--allow-unsafe-chat-template" in err.value.hint
    accepted = audit(template, allow_unsafe=True)
    assert accepted.verdict == "accepted-unsafe" and accepted.findings and not accepted.rendered


def test_size_and_syntax_are_always_refused():
    huge = "{{ messages[0]['content'] }}" + " " * MAX_CHAT_TEMPLATE_BYTES
    for bad, words in [(huge, "at most"), ("{% for m in messages %}{{ m }", "not valid Jinja")]:
        for allow in (False, True):
            with pytest.raises(TokenizerError, match=words):
                audit(bad, allow_unsafe=allow)


def test_a_template_that_does_not_render_or_never_ends_is_refused(monkeypatch):
    with pytest.raises(TokenizerError, match="does not render"):
        audit("{{ raise_exception('no conversations here') }}")
    monkeypatch.setattr(chattemplate, "RENDER_TIMEOUT_S", 3)
    endless = "{% for i in range(100000) %}{% for j in range(100000) %}{{ j }}{% endfor %}{% endfor %}"
    with pytest.raises(TokenizerError, match="did not finish"):
        audit(endless)


def test_named_template_lists_audit_every_entry():
    safe = _published()["qwen3"]
    assert audit_all([{"name": "default", "template": safe}, {"name": "rag", "template": safe}]).verdict == "passed"
    with pytest.raises(TokenizerError, match="'tool_use'"):
        audit_all([{"name": "default", "template": safe}, {"name": "tool_use", "template": ESCAPES["mro walk"]}])


def test_convert_refuses_an_unsafe_template_and_records_an_accepted_one(tmp_path):
    model = tmp_path / "model"
    shutil.copytree(REPO / "examples/demo/model", model)
    config = json.loads((model / "tokenizer_config.json").read_text())
    config["chat_template"] = "{% for m in messages %}{{ m['content'] }}{% endfor %}" + ESCAPES["lipsum globals"]
    (model / "tokenizer_config.json").write_text(json.dumps(config))
    out = tmp_path / "m.gguf"
    res = subprocess.run([sys.executable, "-m", "edgepack", "convert", str(model), "-o", str(out)],
                         capture_output=True, text=True)
    assert res.returncode == TokenizerError.exit_code and "Traceback" not in res.stderr, res.stderr
    assert "reach outside" in res.stderr and not out.exists()
    res = subprocess.run([sys.executable, "-m", "edgepack", "convert", str(model), "-o", str(out), "--json",
                          "--allow-unsafe-chat-template"], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["chat_template"]["verdict"] == "accepted-unsafe"
