"""Gemma's SentencePiece tokenizer, its streaming detokenizer and the chat template."""

from __future__ import annotations

import re
from pathlib import Path

from .errors import GemmaRefError


class Tokenizer:
    """SentencePiece (byte fallback, split digits, no dummy prefix) with Gemma's specials.

    encode() puts `<bos>` first (once) and turns special-token strings written in
    the text (`<start_of_turn>`, `<bos>`, ...) into their ids, as transformers does.
    """

    def __init__(self, model_proto: bytes, source: str = "tokenizer.model"):
        import sentencepiece as spm

        self.sp = spm.SentencePieceProcessor()
        try:
            self.sp.LoadFromSerializedProto(model_proto)
        except (RuntimeError, OSError) as e:
            raise GemmaRefError(f"{source}: not a SentencePiece model ({e})") from None
        self.source = source
        self.vocab_size = self.sp.get_piece_size()
        self.bos_id, self.eos_id, self.pad_id = self.sp.bos_id(), self.sp.eos_id(), self.sp.pad_id()
        # Control tokens (<bos>, <eos>, <pad>, ...) and <unk> are not matched by SentencePiece in
        # text; user-defined ones (<start_of_turn>, ...) are. Split on the former here.
        controls = [self.sp.id_to_piece(i) for i in range(self.vocab_size)
                    if self.sp.is_control(i) or self.sp.is_unknown(i)]
        controls = [p for p in controls if p]
        self._special = (re.compile("(" + "|".join(map(re.escape, sorted(controls, key=len, reverse=True))) + ")")
                         if controls else None)
        self.end_of_turn_id = self.piece_id("<end_of_turn>")
        self.start_of_turn_id = self.piece_id("<start_of_turn>")

    @classmethod
    def from_file(cls, path: str | Path) -> "Tokenizer":
        path = Path(path)
        try:
            return cls(path.read_bytes(), str(path))
        except FileNotFoundError:
            raise GemmaRefError(f"{path}: not found") from None

    def piece_id(self, piece: str) -> int | None:
        """The id of a piece, or None if the vocabulary lacks it."""
        i = self.sp.piece_to_id(piece)
        return None if i == self.sp.unk_id() and piece != self.sp.id_to_piece(i) else i

    def encode(self, text: str, add_bos: bool = True) -> list[int]:
        ids: list[int] = []
        parts = self._special.split(text) if self._special else [text]
        for k, part in enumerate(parts):
            if k % 2:  # a special-token string
                ids.append(self.sp.piece_to_id(part))
            elif part:
                ids.extend(self.sp.encode(part))
        if add_bos and (not ids or ids[0] != self.bos_id):
            ids.insert(0, self.bos_id)  # always <bos> first, never twice
        return ids

    def decode(self, ids) -> str:
        """Text of ids; control tokens (<bos>, <eos>, ...) render as nothing."""
        return self.sp.decode([int(i) for i in ids])

    def stream_decoder(self) -> "StreamDecoder":
        return StreamDecoder(self)


class StreamDecoder:
    """Turns ids, one at a time, into text pieces whose concatenation is decode(ids).

    Holds back output while the text ends in an incomplete UTF-8 sequence (byte
    fallback pieces of one character arrive as several tokens).
    """

    def __init__(self, tokenizer: Tokenizer):
        self.tokenizer, self.ids, self.emitted = tokenizer, [], 0

    def push(self, token_id: int) -> str:
        self.ids.append(int(token_id))
        text = self.tokenizer.decode(self.ids)
        if text.endswith("\ufffd"):  # maybe half a character: wait for the rest
            return ""
        piece, self.emitted = text[self.emitted:], len(text)
        return piece

    def flush(self) -> str:
        text = self.tokenizer.decode(self.ids)
        piece, self.emitted = text[self.emitted:], len(text)
        return piece


def chat_prompt(messages: list[dict], add_generation_prompt: bool = True) -> str:
    """Gemma's chat template (1, 2 and 3).

    <bos><start_of_turn>user\\n{text}<end_of_turn>\\n<start_of_turn>model\\n ...
    There is no system role: a system message is folded into the first user turn
    (as Gemma 3's template does; Gemma 1/2 templates would reject it).
    content: a string, or a list of parts (transformers' chat format): text parts
    (trimmed, as Gemma 3's template does) and image parts, which become
    `<start_of_image>` markers (chat_images lists their images, in order).
    """
    messages = [dict(m, content=_content_text(m.get("content"))) for m in messages]
    system = ""
    if messages and messages[0].get("role") == "system":
        system = messages.pop(0)["content"] + "\n\n"
    out = "<bos>"
    for k, m in enumerate(messages):
        role = {"assistant": "model"}.get(m.get("role"), m.get("role"))
        if role not in ("user", "model"):
            raise GemmaRefError(f"chat: unknown role {m.get('role')!r} (use user, assistant/model, system)")
        if (role == "user") != (k % 2 == 0):
            raise GemmaRefError("chat: roles must alternate user/assistant/user/...")
        text = (system + m["content"]) if k == 0 else m["content"]
        out += f"<start_of_turn>{role}\n{text.strip() if role == 'model' else text}<end_of_turn>\n"
    if add_generation_prompt:
        out += "<start_of_turn>model\n"
    return out


def _content_text(content) -> str:
    """A message's content as template text: image parts become <start_of_image>."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise GemmaRefError(f"chat: content must be a string or a list of parts, not "
                            f"{type(content).__name__}")
    text = ""
    for part in content:
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text":
            text += part["text"].strip()
        elif kind == "image":
            text += "<start_of_image>"
        else:
            raise GemmaRefError(f"chat: unknown content part {part!r} (use "
                                '{"type": "text", "text": ...} or {"type": "image", "image": ...})')
    return text


def chat_images(messages: list[dict]) -> list:
    """The images of a conversation's image parts, in order (`image`, or `path`)."""
    images = []
    for m in messages:
        for part in m.get("content") if isinstance(m.get("content"), list) else []:
            if isinstance(part, dict) and part.get("type") == "image":
                image = part.get("image", part.get("path"))
                if image is None:
                    raise GemmaRefError('chat: an image part needs "image" (a path, PIL image '
                                        'or uint8 array) or "path"')
                images.append(image)
    return images
