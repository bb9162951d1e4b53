"""Chat templates: the checkpoint's own Jinja template, rendered as transformers does.

Where a template comes from, first found wins (transformers' order, then the GGUF's):

1. `chat_template.jinja` (and `additional_chat_templates/NAME.jinja`) in the checkpoint,
2. `chat_template` in `tokenizer_config.json` (a string, or a list of {name, template}),
3. the `tokenizer.chat_template` metadata of the GGUF the checkpoint was converted from,
4. a built-in copy of Google's template for the model's generation (templates/*.jinja),
   only when the checkpoint has none (`ChatTemplate.builtin` is True; `gemma-ref info`
   says so).

Rendering follows transformers' `apply_chat_template(..., tokenize=False)`
(utils/chat_template_utils.py, tokenization_utils_base.py): a jinja2
ImmutableSandboxedEnvironment with trim_blocks and lstrip_blocks, the loopcontrols
extension, `raise_exception`, `strftime_now`, a JSON `tojson`, a sandboxed `namespace`,
the tokenizer's named special tokens as variables (bos_token, eos_token, ...), and
`messages`, `tools`, `documents`, `add_generation_prompt` (+ any extra keywords).
A template's own error (`raise_exception`, e.g. roles that do not alternate) becomes a
GemmaRefError carrying the template's message.
"""

from __future__ import annotations

import datetime
import json
import mmap
import struct
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import jinja2
import jinja2.ext
import jinja2.nodes
import jinja2.utils
from jinja2.sandbox import ImmutableSandboxedEnvironment

from . import files
from .errors import GemmaRefError

TEMPLATES = Path(__file__).parent / "templates"
# The built-in fallback per model_type (Gemma 3n's text template is Gemma 3's).
BUILTIN = {"gemma": "gemma1-it.jinja", "gemma2": "gemma2-it.jinja", "gemma3": "gemma3-it.jinja",
           "gemma3_text": "gemma3-it.jinja", "gemma3n": "gemma3-it.jinja",
           "gemma3n_text": "gemma3-it.jinja", "gemma4": "gemma4-it.jinja",
           "gemma4_text": "gemma4-it.jinja", "vaultgemma": "gemma2-it.jinja",
           "gemma4_unified": "gemma4-it.jinja", "gemma4_unified_text": "gemma4-it.jinja",
           "recurrent_gemma": "gemma1-it.jinja"}
# transformers' SPECIAL_TOKENS_ATTRIBUTES: the named special tokens a template sees.
SPECIAL_TOKEN_NAMES = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token",
                       "cls_token", "mask_token")
# Names a message's reasoning may come under; templates read the first (transformers'
# _REASONING_FIELDS).
_REASONING_FIELDS = ("reasoning_content", "thinking", "reasoning")


@dataclass
class ChatTemplate:
    """One checkpoint's chat template(s) and the special-token strings they see."""

    templates: dict[str, str]  # name -> Jinja source; "default" when there is one
    source: str  # where it came from, for `gemma-ref info`
    special_tokens: dict[str, str] = field(default_factory=dict)  # bos_token -> "<bos>", ...
    builtin: bool = False

    def pick(self, tools=None) -> str:
        """The template to use: "tool_use" when tools are given and it exists, else "default"."""
        if tools is not None and "tool_use" in self.templates:
            return self.templates["tool_use"]
        if "default" in self.templates:
            return self.templates["default"]
        raise GemmaRefError(f"{self.source}: several chat templates ({', '.join(sorted(self.templates))}) "
                            f"and none named 'default'")

    def render(self, messages, add_generation_prompt: bool = True, tools=None, documents=None,
               **kwargs) -> str:
        """The prompt text: what transformers' apply_chat_template(..., tokenize=False) returns."""
        chat = _check_messages(messages)
        if tools is not None and (not isinstance(tools, (list, tuple))
                                  or not all(isinstance(t, dict) for t in tools)):
            raise GemmaRefError("chat: tools must be a list of JSON-schema dicts "
                                "({\"type\": \"function\", \"function\": {...}})")
        template = compile_template(self.pick(tools), self.source)
        variables = {**self.special_tokens, **_plain(kwargs)}  # keywords override tokens
        try:
            return template.render(messages=chat, tools=_plain(tools), documents=_plain(documents),
                                   add_generation_prompt=add_generation_prompt, **variables)
        except GemmaRefError:
            raise
        except Exception as e:  # noqa: BLE001 - any failure inside a template is the template's
            if type(e) is jinja2.exceptions.TemplateError:  # raise_exception(...)
                raise GemmaRefError(f"chat template: {e}") from None
            raise GemmaRefError(f"chat template ({self.source}) failed on this conversation: "
                                f"{type(e).__name__}: {e}") from None


def _check_messages(messages) -> list[dict]:
    """transformers' normalization: dict messages, keys whose value is None dropped,
    reasoning aliases filled, plain JSON data only (a fresh copy)."""
    if isinstance(messages, (str, bytes)) or not isinstance(messages, (list, tuple)):
        raise GemmaRefError("chat: messages must be a list of {\"role\": ..., \"content\": ...} dicts")
    if not messages:
        raise GemmaRefError("chat: the conversation is empty")
    out = []
    for m in messages:
        if not isinstance(m, dict):
            raise GemmaRefError(f"chat: each message must be a dict with 'role' and 'content', got {m!r}")
        m = {k: _plain(v) for k, v in m.items() if v is not None}
        reasoning = next((m[k] for k in _REASONING_FIELDS if m.get(k) is not None), None)
        if reasoning is not None:
            m = {"thinking": reasoning, **m, "reasoning_content": reasoning}
        out.append(m)
    return out


def _plain(value):
    """JSON-like data only (transformers' _plain_template_data): other objects become a
    placeholder naming their type, so a sandboxed template never sees their methods."""
    if value is None or type(value) in (str, int, float, bool):
        return value
    if isinstance(value, str):
        return str.__str__(value)
    if isinstance(value, int):
        return int.__int__(value)
    if isinstance(value, float):
        return float.__float__(value)
    if isinstance(value, dict):
        return {_plain(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, tuple):
        return tuple(_plain(v) for v in value)
    if hasattr(value, "item") and callable(value.item) and getattr(value, "ndim", None) == 0:
        return _plain(value.item())  # a NumPy scalar
    return f"<{type(value).__name__}>"


# --- the Jinja environment (transformers' _cached_compile_jinja_template) ------------------


def _raise_exception(message):
    raise jinja2.exceptions.TemplateError(message)


def _tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    """JSON as json.dumps writes it (Jinja's own tojson escapes HTML characters)."""
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators,
                      sort_keys=sort_keys)


def _strftime_now(format):
    return datetime.datetime.now().strftime(format)


class _TemplateDict:
    """`dict(...)` in a template, without the attributes of the dict type."""

    def __call__(self, *args, **kwargs):
        return dict(*args, **kwargs)

    def fromkeys(self, *args, **kwargs):
        return dict.fromkeys(*args, **kwargs)


class _TemplateNamespace(jinja2.utils.Namespace):
    """`namespace(...)` that refuses underscore attributes (no way to CPython internals)."""

    def __init__(*args, **kwargs):
        self, args = args[0], args[1:]  # Jinja's signature trick: namespace(self=...) works
        attrs = dict(*args, **kwargs)
        for name in attrs:
            _TemplateNamespace._check_name(name)
        jinja2.utils.Namespace.__init__(self, attrs)

    def __setitem__(self, name, value):
        _TemplateNamespace._check_name(name)
        jinja2.utils.Namespace.__setitem__(self, name, value)

    @staticmethod
    def _check_name(name):
        if isinstance(name, str) and name.startswith("_"):
            raise jinja2.exceptions.SecurityError(
                f"chat templates cannot store underscore-prefixed attributes on a namespace: {name!r}")


class _GenerationTag(jinja2.ext.Extension):
    """`{% generation %}...{% endgeneration %}` renders its body (transformers' AssistantTracker
    also records where, for training masks, which a prompt does not need)."""

    tags = {"generation"}

    def parse(self, parser):
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return jinja2.nodes.CallBlock(self.call_method("_body"), [], [], body).set_lineno(lineno)

    def _body(self, caller):
        return caller()


@lru_cache(maxsize=1)
def _environment() -> ImmutableSandboxedEnvironment:
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[_GenerationTag, jinja2.ext.loopcontrols])
    env.filters["tojson"] = _tojson
    env.globals.update(raise_exception=_raise_exception, strftime_now=_strftime_now,
                       dict=_TemplateDict(), namespace=_TemplateNamespace)
    return env


@lru_cache(maxsize=32)
def compile_template(source_text: str, where: str = "chat template"):
    """A compiled template (cached by its text)."""
    try:
        return _environment().from_string(source_text)
    except jinja2.exceptions.TemplateSyntaxError as e:
        raise GemmaRefError(f"{where}: chat template syntax error at line {e.lineno}: {e.message}") from None


# --- finding a checkpoint's template ------------------------------------------------------


def load(directory: Path | None, tokenizer=None, model_type: str = "gemma3",
         gguf_path: Path | None = None) -> ChatTemplate:
    """The chat template of a checkpoint directory (see the module docstring for the order)."""
    config = _tokenizer_config(directory)
    tokens = special_tokens(config, tokenizer)
    templates, source = {}, None
    if directory is not None:
        main = directory / "chat_template.jinja"
        if main.exists():  # a directory or FIFO in its place is an error, not "no template"
            templates["default"] = _read(main)
            source = str(main)
        extra = directory / "additional_chat_templates"
        if extra.is_dir():
            for f in sorted(extra.glob("*.jinja")):
                templates[f.stem] = _read(f)
            source = source or str(extra)
    if not templates and config.get("chat_template"):
        t = config["chat_template"]
        if isinstance(t, str):
            templates = {"default": t}
        elif isinstance(t, list) and all(isinstance(x, dict) and "name" in x and "template" in x for x in t):
            templates = {x["name"]: x["template"] for x in t}
        else:
            raise GemmaRefError(f"{directory / 'tokenizer_config.json'}: chat_template must be a string "
                                f"or a list of {{\"name\", \"template\"}}")
        source = str(directory / "tokenizer_config.json")
    if not templates and gguf_path is not None:
        t = gguf_chat_template(gguf_path)
        if t:
            templates, source = {"default": t}, f"{gguf_path} (tokenizer.chat_template)"
    if templates:
        return ChatTemplate(templates, source, tokens)
    return builtin(model_type, tokens)


def builtin(model_type: str = "gemma3", tokens: dict | None = None) -> ChatTemplate:
    """Google's template for this generation, for checkpoints that carry none."""
    name = BUILTIN.get(model_type, "gemma3-it.jinja")
    if tokens is None:
        tokens = {"bos_token": "<bos>", "eos_token": "<eos>", "unk_token": "<unk>", "pad_token": "<pad>"}
    return ChatTemplate({"default": (TEMPLATES / name).read_text(encoding="utf-8")},
                        f"built-in {name} (the checkpoint has no chat template)", tokens, builtin=True)


def special_tokens(config: dict, tokenizer=None) -> dict[str, str]:
    """bos_token, eos_token, ... as strings: tokenizer_config.json's, else the vocabulary's."""
    out = {}
    if tokenizer is not None:
        sp = tokenizer.sp
        for name, i in (("bos_token", sp.bos_id()), ("eos_token", sp.eos_id()),
                        ("unk_token", sp.unk_id()), ("pad_token", sp.pad_id())):
            if i >= 0:
                out[name] = sp.id_to_piece(i)
        if tokenizer.piece_id("<mask>") is not None:  # transformers' GemmaTokenizer default
            out["mask_token"] = "<mask>"
    named = list(SPECIAL_TOKEN_NAMES)
    extra = config.get("extra_special_tokens") or config.get("model_specific_special_tokens") or {}
    if isinstance(extra, dict):
        named += list(extra)
        config = {**extra, **config}
    for name in named:
        value = config.get(name)
        if isinstance(value, dict):  # a serialized AddedToken
            value = value.get("content")
        if isinstance(value, str):
            out[name] = value
    return out


def _tokenizer_config(directory: Path | None) -> dict:
    f = None if directory is None else directory / "tokenizer_config.json"
    if f is None or not f.exists():
        return {}
    try:
        config = json.loads(files.read_bytes(f).decode("utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise GemmaRefError(f"{f}: not valid JSON") from None
    if not isinstance(config, dict):
        raise GemmaRefError(f"{f}: expected a JSON object")
    return config


def _read(path: Path) -> str:
    try:
        return files.read_text(path)
    except UnicodeDecodeError:
        raise GemmaRefError(f"{path}: not UTF-8 text") from None


# --- a GGUF's template, read from its header alone ------------------------------------------

# GGUF value types (gguf's GGUFValueType) -> struct format of a scalar; 8 string, 9 array
_SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}


def gguf_chat_template(path: Path, key: str = "tokenizer.chat_template") -> str | None:
    """The string metadata `key` of a GGUF file, or None; reads only the key/value header.

    (gguf.GGUFReader would parse the 262k-entry vocabulary into Python objects first.)
    """
    try:
        with files.open_file(path, ".gguf file") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
            if m[:4] != b"GGUF":
                return None
            version, = struct.unpack_from("<I", m, 4)
            if version < 2:
                return None
            n_kv, = struct.unpack_from("<Q", m, 16)
            pos = 24

            def string(pos):
                n, = struct.unpack_from("<Q", m, pos)
                return m[pos + 8:pos + 8 + n], pos + 8 + n

            def skip(kind, pos):
                if kind in _SCALARS:
                    return pos + struct.calcsize(_SCALARS[kind])
                if kind == 8:
                    return string(pos)[1]
                if kind == 9:
                    item, n = struct.unpack_from("<IQ", m, pos)
                    pos += 12
                    if item in _SCALARS:
                        return pos + n * struct.calcsize(_SCALARS[item])
                    for _ in range(n):
                        pos = skip(item, pos)
                    return pos
                raise ValueError(f"unknown GGUF value type {kind}")

            for _ in range(n_kv):
                name, pos = string(pos)
                kind, = struct.unpack_from("<I", m, pos)
                pos += 4
                if name == key.encode() and kind == 8:
                    return string(pos)[0].decode("utf-8")
                pos = skip(kind, pos)
    except (OSError, ValueError, struct.error, UnicodeDecodeError) as e:
        raise GemmaRefError(f"{path}: cannot read the GGUF metadata ({e})") from None
    return None
