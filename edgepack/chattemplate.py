"""Audit a chat template before it ships: size, syntax, a sandboxed render, and constructs that reach outside.

A chat template is Jinja code written by whoever published the checkpoint. edgepack copies it into the GGUF and
the bundle manifest, and every app that loads the model runs it (llama-cpp-python compiles it in a Jinja sandbox on
each load; llama.cpp's server runs it through its own engine). So before a template ships it must:

* be at most ``limits.MAX_CHAT_TEMPLATE_BYTES`` (compiling costs hundreds of times its size in memory);
* parse as Jinja;
* render a fixed plain conversation in Jinja's immutable sandbox, in a child process with a time limit (a
  template can loop for ever);
* use none of the constructs that sandbox escapes are made of: underscore attributes (``__class__``,
  ``__globals__``, ...), the ``attr`` filter with a computed or underscore name, the globals that lead to Python
  internals (``self``, ``lipsum``, ``cycler``, ``joiner``), or ``import``/``include``/``extends``.

Published templates (Llama, Qwen, Gemma, Mistral, Phi, SmolLM) use none of these. A template that fails the
construct check is refused unless the user accepts it explicitly (``--allow-unsafe-chat-template``); one that is too
large or does not parse is always refused. The audit's result goes into the bundle manifest.
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import asdict, dataclass, field

from .errors import TokenizerError
from .limits import MAX_CHAT_TEMPLATE_BYTES

RENDER_TIMEOUT_S = 10
GADGET_GLOBALS = ("self", "lipsum", "cycler", "joiner")
CONVERSATIONS = (  # tried in order: some templates refuse a system turn
    [{"role": "system", "content": "You are a helpful assistant."}, {"role": "user", "content": "Hello!"},
     {"role": "assistant", "content": "Hi, how can I help?"}, {"role": "user", "content": "Name a colour."}],
    [{"role": "user", "content": "Hello!"}, {"role": "assistant", "content": "Hi, how can I help?"},
     {"role": "user", "content": "Name a colour."}],
)


@dataclass(frozen=True)
class TemplateAudit:
    sha256: str
    size_bytes: int
    findings: tuple[str, ...] = field(default=())  # constructs that reach outside the template
    rendered: bool = False
    accepted_unsafe: bool = False

    @property
    def verdict(self) -> str:
        if not self.findings:
            return "passed"
        return "accepted-unsafe" if self.accepted_unsafe else "refused"

    def to_json(self) -> dict:
        return {**asdict(self), "findings": list(self.findings), "verdict": self.verdict}


def _refuse(message: str, hint: str) -> TokenizerError:
    return TokenizerError(message, hint)


def _constructs(ast) -> list[str]:
    from jinja2 import nodes

    found = []
    for node in ast.find_all((nodes.Getattr, nodes.Getitem, nodes.Name, nodes.Filter, nodes.Import,
                              nodes.FromImport, nodes.Include, nodes.Extends)):
        if isinstance(node, nodes.Getattr) and node.attr.startswith("_"):
            found.append(f"attribute access .{node.attr}")
        elif isinstance(node, nodes.Getitem) and isinstance(node.arg, nodes.Const) \
                and isinstance(node.arg.value, str) and node.arg.value.startswith("_"):
            found.append(f"item access [{node.arg.value!r}]")
        elif isinstance(node, nodes.Name) and node.name in GADGET_GLOBALS and node.ctx == "load":
            found.append(f"the global '{node.name}'")
        elif isinstance(node, nodes.Filter) and node.name == "attr":
            arg = node.args[0] if node.args else None
            if not (isinstance(arg, nodes.Const) and isinstance(arg.value, str) and not arg.value.startswith("_")):
                found.append("the attr filter with a computed or underscore name")
        elif isinstance(node, (nodes.Import, nodes.FromImport, nodes.Include, nodes.Extends)):
            found.append(f"{type(node).__name__.lower()} of another template")
    return sorted(set(found))


def render_check(template: str) -> bool:
    """Child-process side of the render: True when a plain conversation renders to non-empty text."""
    from jinja2.exceptions import TemplateError
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message):
        raise TemplateError(message)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    compiled = env.from_string(template, globals={"raise_exception": raise_exception,
                                                  "strftime_now": lambda fmt: "26 Nov 2026"})
    last: Exception | None = None
    for messages in CONVERSATIONS:
        try:
            text = compiled.render(messages=messages, add_generation_prompt=True, bos_token="<s>",
                                   eos_token="</s>", tools=None)
        except TemplateError as exc:
            last = exc
            continue
        if text.strip():
            return True
    raise _refuse(f"the chat template does not render a plain conversation ({last or 'empty output'})",
                  "fix the template in tokenizer_config.json / chat_template.jinja")


@functools.lru_cache(maxsize=32)  # a build bundles one template for every profile: audit it once
def audit(template: str, *, allow_unsafe: bool = False, where: str = "the chat template") -> TemplateAudit:
    """Audit ``template``; raise ``TokenizerError`` (one line) when it must not ship."""
    from jinja2 import Environment
    from jinja2.exceptions import TemplateSyntaxError

    from . import isolate

    if not isinstance(template, str):
        raise _refuse(f"{where} is a {type(template).__name__}, not text", "a chat template is a Jinja string")
    raw = template.encode("utf-8", errors="surrogatepass")
    if len(raw) > MAX_CHAT_TEMPLATE_BYTES:
        raise _refuse(f"{where} is {len(raw):,} bytes; at most {MAX_CHAT_TEMPLATE_BYTES:,} are accepted",
                      "published templates are tens of KB: check the file, or remove the template")
    try:
        ast = Environment().parse(template)
    except TemplateSyntaxError as exc:
        raise _refuse(f"{where} is not valid Jinja (line {exc.lineno}: {exc.message})",
                      "fix the template in tokenizer_config.json / chat_template.jinja") from None
    findings = tuple(_constructs(ast))
    if findings and not allow_unsafe:
        raise _refuse(f"{where} uses constructs that can reach outside the template: {'; '.join(findings)}",
                      "inspect it; if you trust it, pass --allow-unsafe-chat-template")
    rendered = False
    if not findings:  # an accepted unsafe template is not run here either
        rendered = bool(isolate.call(render_check, template, what=where,
                                     error_type=TokenizerError, timeout_s=RENDER_TIMEOUT_S,
                                     hint="fix the template in tokenizer_config.json / chat_template.jinja"))
    return TemplateAudit(sha256=hashlib.sha256(raw).hexdigest(), size_bytes=len(raw), findings=findings,
                         rendered=rendered, accepted_unsafe=bool(findings))


def audit_all(chat_template, *, allow_unsafe: bool = False) -> TemplateAudit | None:
    """Audit what tokenizer_config.json holds: one template, or a list of named ones (every one is checked;
    the default's audit is returned). None when there is no template."""
    if chat_template is None:
        return None
    if isinstance(chat_template, list):
        audits = {}
        for entry in chat_template:
            if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
                raise _refuse("tokenizer_config.json's chat_template list holds an entry without a name",
                              "each entry is {\"name\": ..., \"template\": ...}")
            audits[entry["name"]] = audit(entry.get("template"), allow_unsafe=allow_unsafe,
                                          where=f"the chat template {entry['name']!r}")
        return audits.get("default") or next(iter(audits.values()), None)
    return audit(chat_template, allow_unsafe=allow_unsafe)
