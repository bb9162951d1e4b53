"""Gemma's SentencePiece tokenizer, its streaming detokenizer and the built-in chat prompt.

Gemma 1-3 repos ship `tokenizer.model` (SentencePiece). A repo that ships only the
Hugging Face `tokenizer.json` (Gemma 4) is read without the `tokenizers` package: its
BPE vocabulary and merge list are rewritten into an equivalent SentencePiece model
(`sentencepiece_from_tokenizer_json`), which the same SentencePiece code then runs.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from . import files
from .errors import GemmaRefError

# Turn markers: Gemma 1-3 spell them <start_of_turn> / <end_of_turn>, Gemma 4 <|turn> / <turn|>.
START_OF_TURN = ("<start_of_turn>", "<|turn>")
END_OF_TURN = ("<end_of_turn>", "<turn|>")


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
        self.end_of_turn_id = next((i for i in map(self.piece_id, END_OF_TURN) if i is not None), None)
        self.start_of_turn_id = next((i for i in map(self.piece_id, START_OF_TURN) if i is not None), None)

    @classmethod
    def from_file(cls, path: str | Path) -> "Tokenizer":
        path = Path(path)
        return cls(files.read_bytes(path, missing="not found"), str(path))

    @classmethod
    def from_tokenizer_json(cls, path: str | Path) -> "Tokenizer":
        """A Hugging Face tokenizer.json of SentencePiece style (see the module docstring)."""
        path = Path(path)
        try:
            data = json.loads(files.read_bytes(path, missing="not found").decode("utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise GemmaRefError(f"{path}: not valid JSON ({e})") from None
        return cls(sentencepiece_from_tokenizer_json(data, str(path)), str(path))

    @classmethod
    def from_checkpoint(cls, directory: str | Path) -> "Tokenizer | None":
        """tokenizer.model if the checkpoint has one, else tokenizer.json, else None."""
        directory = Path(directory)
        if (directory / "tokenizer.model").exists():
            return cls.from_file(directory / "tokenizer.model")
        if (directory / "tokenizer.json").exists():
            return cls.from_tokenizer_json(directory / "tokenizer.json")
        return None

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


def sentencepiece_from_tokenizer_json(data, source: str = "tokenizer.json") -> bytes:
    """A serialized SentencePiece BPE model equivalent to a SentencePiece-style tokenizer.json.

    The tokenizer.json that transformers writes for a Gemma SentencePiece model is: a BPE
    model with byte fallback, whose merges were ordered by the SentencePiece scores; a
    normalizer that turns " " into "▁"; no pre-tokenization (a split on " ", which the
    normalizer has already removed). SentencePiece's BPE merges, at each step, the
    adjacent pair whose joined piece has the highest score; BPE the pair of lowest merge
    rank. So each piece gets score = -(rank of the merge that makes it), and the two
    tokenize alike. Added tokens become control pieces (<bos>, <eos>, <pad>), the unknown
    piece, or user-defined pieces (matched whole in text: <|turn>, <turn|>, ...).
    Any other normalizer or pre-tokenizer is refused, never approximated.
    """
    from sentencepiece import sentencepiece_model_pb2 as sp_pb2

    def bad(what):
        return GemmaRefError(f"{source}: {what}; gemma-ref reads SentencePiece-style BPE tokenizer.json "
                             f"files (or give the checkpoint a tokenizer.model)")

    model = data.get("model") if isinstance(data, dict) else None
    if not isinstance(model, dict) or model.get("type") != "BPE" or not model.get("byte_fallback"):
        raise bad("the model is not a BPE with byte_fallback")
    space = {"type": "Replace", "pattern": {"String": " "}, "content": "\u2581"}
    normalizers = data.get("normalizer")
    if (normalizers or {}).get("type") == "Sequence":
        normalizers = normalizers.get("normalizers")
    else:
        normalizers = [normalizers]
    if normalizers != [space]:
        raise bad(f"normalizer {json.dumps(data.get('normalizer'))[:120]} is not ' ' -> '\u2581'")
    pre = data.get("pre_tokenizer")
    if pre is not None and not (pre.get("type") == "Split" and pre.get("pattern") == {"String": " "}):
        raise bad(f"pre_tokenizer {json.dumps(pre)[:120]} is not a no-op")

    by_id = {i: p for p, i in model["vocab"].items()}  # id -> piece
    added = {t["id"]: t for t in data.get("added_tokens", [])}
    by_id.update({i: t["content"] for i, t in added.items()})  # added tokens win
    pieces = {p: i for i, p in by_id.items()}
    n = len(by_id)
    if sorted(by_id) != list(range(n)) or len(pieces) != n:
        raise bad("token ids are not 0..n-1, one piece each")
    rank = {}
    for r, merge in enumerate(model.get("merges", [])):
        a, b = merge.split(" ", 1) if isinstance(merge, str) else merge
        rank.setdefault(a + b, r)
    unk = model.get("unk_token")
    control = {"<bos>", "<eos>", "<pad>"}

    proto = sp_pb2.ModelProto()
    trainer, normalizer = proto.trainer_spec, proto.normalizer_spec
    trainer.model_type = sp_pb2.TrainerSpec.BPE  # as Gemma's tokenizer.model
    trainer.vocab_size = n
    trainer.byte_fallback = True
    trainer.split_digits = True
    trainer.allow_whitespace_only_pieces = True
    for name, piece in (("unk", unk), ("bos", "<bos>"), ("eos", "<eos>"), ("pad", "<pad>")):
        setattr(trainer, name + "_id", pieces.get(piece, -1))
        if piece in pieces:
            setattr(trainer, name + "_piece", piece)
    normalizer.name = "identity"  # no NFKC, no dummy prefix, spaces kept and escaped to "▁"
    normalizer.add_dummy_prefix = False
    normalizer.remove_extra_whitespaces = False
    normalizer.escape_whitespaces = True
    Type = sp_pb2.ModelProto.SentencePiece.Type
    for i in range(n):
        piece, score = by_id[i], 0.0
        if piece == unk:
            kind = Type.UNKNOWN
        elif i in added:
            kind = Type.CONTROL if piece in control else Type.USER_DEFINED
        elif re.fullmatch(r"<0x[0-9A-F]{2}>", piece):
            kind = Type.BYTE
        else:
            kind = Type.NORMAL
            # a piece no merge makes (single characters) is never the result of a merge
            score = -float(rank[piece]) if piece in rank else (0.0 if len(piece) == 1 else -1e9)
        proto.pieces.add(piece=piece, score=score, type=kind)
    return proto.SerializeToString()


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


def chat_images(messages: list[dict]) -> list:
    """The images of a conversation's image parts, in order (`image`, `path`, or `url` as
    transformers' chat format names them; a URL must be a local file: nothing is downloaded)."""
    return chat_media(messages, "image", "a path, PIL image or uint8 array")


def chat_audio(messages: list[dict]) -> list:
    """The clips of a conversation's audio parts, in order (`audio`, `path` or `url`: a
    local file, or (samples, sample_rate))."""
    return chat_media(messages, "audio", "a path or (samples, sample_rate)")


def chat_media(messages: list[dict], kind: str, what: str) -> list:
    """The values of a conversation's parts of type `kind`, in order (under `kind`, `path` or
    `url`, as transformers' chat format names them); nothing is downloaded."""
    found = []
    for m in messages:
        for part in m.get("content") if isinstance(m.get("content"), list) else []:
            if isinstance(part, dict) and part.get("type") == kind:
                value = next((part[k] for k in (kind, "path", "url") if part.get(k) is not None), None)
                if value is None:
                    raise GemmaRefError(f'chat: an {kind} part needs "{kind}" ({what}), "path" or "url"')
                if isinstance(value, str) and value.startswith(("http://", "https://")):
                    noun = "images" if kind == "image" else kind
                    raise GemmaRefError(f"chat: {value[:60]}: gemma-ref reads {noun} from files and "
                                        "downloads none; save it and give its path")
                found.append(value)
    return found
