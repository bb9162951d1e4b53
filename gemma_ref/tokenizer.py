"""Gemma's SentencePiece tokenizer, its streaming detokenizer, and the built-in chat prompt."""

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
        check_text(text)
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


def check_text(text, what: str = "text") -> str:
    """`text` if it is a str that UTF-8 can encode, else a GemmaRefError saying where it is not.

    Undecodable input bytes reach Python as lone surrogates (U+DC80-U+DCFF: how Python
    decodes command-line arguments); gemma-ref refuses them rather than guess a
    replacement, as a changed character changes the tokens.
    """
    if not isinstance(text, str):
        raise GemmaRefError(f"{what} must be a str, not {type(text).__name__}")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        c = ord(text[e.start])
        byte = f"byte 0x{c - 0xDC00:02x}" if 0xDC80 <= c <= 0xDCFF else f"lone surrogate U+{c:04X}"
        raise GemmaRefError(f"{what} is not valid UTF-8 ({byte} at character {e.start}): give "
                            f"UTF-8 text (e.g. convert it with iconv -t UTF-8)") from None
    return text


def decode_utf8(data: bytes, where: str) -> str:
    """UTF-8 bytes as text; invalid UTF-8 is a GemmaRefError naming where (never replaced)."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise GemmaRefError(f"{where}: not valid UTF-8 (byte 0x{data[e.start]:02x} at offset "
                            f"{e.start}, line {line}): give UTF-8 text (e.g. convert it with "
                            f"iconv -t UTF-8)") from None


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


def chat_prompt(messages: list[dict], add_generation_prompt: bool = True, tools=None) -> str:
    """A conversation in Google's Gemma 3 instruction-tuned template (the built-in copy).

    <bos><start_of_turn>user\\n{text}<end_of_turn>\\n<start_of_turn>model\\n ...
    A system message is folded into the first user turn. `Model.chat_prompt` renders
    the checkpoint's own template instead (see chat_template.py).
    """
    from . import chat_template

    return chat_template.builtin("gemma3").render(messages, add_generation_prompt, tools)
