"""Speed and memory benchmark: gemma-ref vs Hugging Face transformers vs llama.cpp.

    python scripts/bench.py                       # default model (Gemma 3 270M GGUF), all engines
    python scripts/bench.py --quick               # smoke run: small sizes, one repeat
    python scripts/bench.py --model DIR_OR_GGUF --engines gemma-ref,transformers --repeats 3
    python scripts/bench.py --engines gemma-ref@HEAD~5,gemma-ref@HEAD,transformers   # before/after
    python scripts/bench.py --memory-test DIR --max-memory-gb 4   # big checkpoint, gemma-ref only

Never a test: nothing here asserts a speed. Every engine runs in its own subprocess
(so peak RSS is that engine's alone), the engines alternate within each repeat, and
the tables show medians over --repeats. Every engine gets the same thread count
(--threads): OMP/OPENBLAS/MKL env for NumPy and torch, torch.set_num_threads,
n_threads/n_threads_batch for llama.cpp. Prompts are seeded random token ids (BOS
first), identical for every engine; decoding is greedy and ignores end-of-sequence,
so every engine decodes exactly the same number of tokens.

Engines:
  gemma-ref        gemma_ref.Model.from_pretrained(model), float32 NumPy
  transformers     AutoModelForCausalLM, float32, PyTorch CPU, attention --hf-attn, generate()
                   (default sdpa); from a GGUF via from_pretrained(dir, gguf_file=name)
                   (dequantized to float32 on load, as gemma-ref does)
  transformers-loop  the same model in a plain greedy loop without generate(): the prompt
                   in one call, then a token a call, logits_to_keep=1 (its fastest path)
  llama.cpp        llama-cpp-python on the GGUF as it is (quantized, e.g. Q4_K_M: not float32)
  llama.cpp-f32    llama-cpp-python on an F32 GGUF written from the source GGUF by
                   dequantizing every tensor (the gguf package's reader/writer): the very
                   float32 weights the other two engines compute with, so like-for-like
Requires for transformers on a GGUF: accelerate and gguf. llama.cpp engines are
skipped (with a note) when llama_cpp is not importable or the model is not a GGUF.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ENGINES = ("gemma-ref", "transformers", "transformers-loop", "llama.cpp", "llama.cpp-f32")
MARK = "@@BENCH@@"

# Workload sizes: full run, and --quick.
FULL = dict(ttft_prompt=16, prefill_len=512, decode_new=64, batch=8, batch_prompt=64,
            batch_new=32, long_len=8192, long_new=16)
QUICK = dict(ttft_prompt=16, prefill_len=128, decode_new=16, batch=8, batch_prompt=32,
             batch_new=8, long_len=1024, long_new=4)


# --- measuring inside a child ---------------------------------------------------


def proc_status() -> dict[str, int]:
    """/proc/self/status memory lines in bytes (VmHWM = peak RSS, RssAnon, RssFile, ...)."""
    out = {}
    try:
        with open("/proc/self/status") as f:
            for line in f:
                key, _, rest = line.partition(":")
                if key.startswith(("Vm", "Rss")):
                    out[key] = int(rest.split()[0]) * 1024
    except OSError:
        import resource

        out["VmHWM"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return out


class RssSampler:
    """Samples RssAnon / RssFile every `every` s: the peaks of each part (VmHWM gives the
    peak of their sum only)."""

    def __init__(self, every=0.05):
        self.every, self.peak = every, {"RssAnon": 0, "RssFile": 0}
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _run(self):
        while not self._stop.is_set():
            s = proc_status()
            for k in self.peak:
                self.peak[k] = max(self.peak[k], s.get(k, 0))
            self._stop.wait(self.every)

    def stop(self) -> dict:
        self._stop.set()
        self._t.join()
        return self.peak


def prompts_for(n_vocab: int, seed: int, length: int, count: int = 1) -> list[list[int]]:
    """`count` seeded prompts of `length` ids: BOS (2), then ids uniform in [10, min(V, 32000))."""
    import numpy as np

    rng = np.random.default_rng(seed)
    hi = min(n_vocab, 32000)
    return [[2] + rng.integers(10, hi, length - 1).tolist() for _ in range(count)]


class GemmaRef:
    name = "gemma-ref"

    def __init__(self, model, threads, spec):
        import numpy as np  # noqa: F401  (threads come from the environment)

        sys.path.insert(0, spec.get("gemma_ref_src") or str(ROOT))
        from gemma_ref import Model

        try:  # gemma-ref's own matmul threads, when the engine has them
            from gemma_ref import parallel

            parallel.set_threads(threads)
        except (ImportError, AttributeError):
            pass
        kw = {} if spec.get("max_memory") is None else {"max_memory": spec["max_memory"]}
        self.model = Model.from_pretrained(model, progress=False, **kw)
        self.n_vocab = self.model.n_vocab

    def tiers(self) -> dict:
        """GB of weights by where they are held (loader.plan_tiers): float32 / stored in RAM, mapped."""
        import numpy as np

        gb = {}
        for a in self.model.weights.arrays.values():
            mapped = isinstance(a, np.memmap) or not isinstance(a, np.ndarray)  # StoredTensor
            kind = f"mapped ({np.dtype(a.dtype).name})" if mapped else f"{a.dtype.name} in RAM"
            gb[kind] = gb.get(kind, 0) + int(np.prod(a.shape)) * np.dtype(a.dtype).itemsize / 1e9
        return gb

    def generate(self, prompts, n_new):
        """(t_start, [time each step's tokens were ready], ids of row 0)."""
        stamps, ids = [], []
        t0 = time.perf_counter()
        for step in self.model.generate_ids(prompts, max_new_tokens=n_new, temperature=0.0,
                                            stop_ids=[]):
            stamps.append(time.perf_counter())
            ids.append(step[0])
        return t0, stamps, ids

    def forward_all(self, prompt):
        """Seconds for one stateless forward returning logits at every position."""
        t0 = time.perf_counter()
        self.model.forward(prompt)
        return time.perf_counter() - t0


class Transformers:
    name = "transformers"

    def __init__(self, model, threads, spec):
        import torch
        from transformers import AutoModelForCausalLM
        from transformers.generation.streamers import BaseStreamer

        torch.set_num_threads(threads)
        self.torch = torch
        path = Path(model)
        kw = dict(dtype=torch.float32, attn_implementation=spec["hf_attn"])
        if path.suffix == ".gguf":
            m = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, **kw)
        else:
            m = AutoModelForCausalLM.from_pretrained(str(path), **kw)
        self.model = m.eval()
        self.n_vocab = m.config.vocab_size
        self.attn = m.config._attn_implementation

        class Stamps(BaseStreamer):
            def __init__(self):
                self.times = []

            def put(self, value):  # first call: the prompt; then one per new token
                self.times.append(time.perf_counter())

            def end(self):
                pass

        self.Stamps = Stamps

    def generate(self, prompts, n_new):
        torch = self.torch
        ids = torch.tensor(prompts, dtype=torch.long)
        streamer = self.Stamps()  # put() gets [B] new ids per step, whatever B
        with torch.inference_mode():
            t0 = time.perf_counter()
            out = self.model.generate(
                input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=n_new,
                min_new_tokens=n_new, do_sample=False, temperature=None, top_p=None, top_k=None,
                pad_token_id=0, streamer=streamer, use_cache=True)
            t_end = time.perf_counter()
        new = out[0, ids.shape[1]:].tolist()
        stamps = streamer.times[1:] or [t_end] * n_new
        return t0, stamps, new

    def forward_all(self, prompt):
        torch = self.torch
        ids = torch.tensor([prompt], dtype=torch.long)
        with torch.inference_mode():
            t0 = time.perf_counter()
            self.model(input_ids=ids, logits_to_keep=0)  # 0: logits at every position
            return time.perf_counter() - t0


class LlamaCpp:
    name = "llama.cpp"

    def __init__(self, model, threads, spec):
        import numpy as np
        from llama_cpp import Llama

        self.np = np
        self.llm = Llama(model_path=str(model), n_ctx=spec["n_ctx"], n_threads=threads,
                         n_threads_batch=threads, n_batch=512, n_ubatch=512, verbose=False,
                         seed=0)
        self.n_vocab = self.llm.n_vocab()

    def generate(self, prompts, n_new):
        if len(prompts) != 1:
            raise NotImplementedError("batched generation is not measured for llama.cpp")
        np, llm = self.np, self.llm
        stamps, ids = [], []
        llm.reset()
        t0 = time.perf_counter()
        llm.eval(prompts[0])
        for i in range(n_new):
            logits = np.ctypeslib.as_array(llm._ctx.get_logits_ith(-1), shape=(self.n_vocab,))
            tok = int(logits.argmax())
            stamps.append(time.perf_counter())
            ids.append(tok)
            if i + 1 < n_new:
                llm.eval([tok])
        return t0, stamps, ids


class TransformersLoop(Transformers):
    """transformers' model without generate(): a plain greedy loop, the fastest ordinary
    path (no logits processors, no stopping criteria, no streamer): the prompt in one
    call, then one token a call through the cache, logits of the last position only
    (logits_to_keep=1)."""

    name = "transformers-loop"

    def generate(self, prompts, n_new):
        torch = self.torch
        ids = torch.tensor(prompts, dtype=torch.long)
        stamps, new = [], []
        with torch.inference_mode():
            t0 = time.perf_counter()
            out = self.model(input_ids=ids, use_cache=True, logits_to_keep=1)
            for _ in range(n_new):
                nxt = out.logits[:, -1].argmax(-1, keepdim=True)  # [B, 1]
                stamps.append(time.perf_counter())
                new.append(int(nxt[0, 0]))
                if len(new) == n_new:
                    break
                out = self.model(input_ids=nxt, past_key_values=out.past_key_values,
                                 use_cache=True, logits_to_keep=1)
        return t0, stamps, new


ADAPTERS = {"gemma-ref": GemmaRef, "transformers": Transformers,
            "transformers-loop": TransformersLoop, "llama.cpp": LlamaCpp,
            "llama.cpp-f32": LlamaCpp}


def child(spec: dict) -> dict:
    """Run one task of one engine in this (fresh) process; return its measurements."""
    task, engine, threads = spec["task"], spec["engine"], spec["threads"]
    sampler = RssSampler()
    r = {"engine": engine, "task": task}
    if engine.startswith("gemma-ref"):
        r["gemma_ref_commit"] = spec.get("gemma_ref_rev") or git_commit()
    t0 = time.perf_counter()
    eng = ADAPTERS[engine.split("@")[0]](spec["model"], threads, spec)
    r["load_s"] = time.perf_counter() - t0
    if task == "main":
        # Load-to-first-token: load + the first (cold) generation of a short prompt.
        (p,) = prompts_for(eng.n_vocab, 1, spec["ttft_prompt"])
        s, stamps, _ = eng.generate([p], 1)
        r["ttft_s"] = r["load_s"] + (stamps[0] - s)
        # Prefill and decode on the generation path: one prompt, greedy.
        (p,) = prompts_for(eng.n_vocab, 2, spec["prefill_len"])
        s, stamps, ids = eng.generate([p], spec["decode_new"])
        r["prefill_tps"] = spec["prefill_len"] / (stamps[0] - s)
        r["decode_tps"] = (len(stamps) - 1) / (stamps[-1] - stamps[0])
        r["ids"] = ids
        # Batched generation: total new tokens / wall time (prefill included).
        for b in (1, spec["batch"]):
            ps = prompts_for(eng.n_vocab, 3, spec["batch_prompt"], b)
            try:
                s, stamps, _ = eng.generate(ps, spec["batch_new"])
            except NotImplementedError:
                continue
            r[f"batch{b}_tps"] = b * spec["batch_new"] / (stamps[-1] - s)
            # Decode only: the steps after the first new tokens (prefill excluded).
            r[f"batch{b}_decode_tps"] = b * (len(stamps) - 1) / (stamps[-1] - stamps[0])
        # Last, as it holds [512, 262144] logits (0.5 GB) that the generation path never
        # does: the prefill prompt through a plain forward with logits at every position
        # (what a scoring pass computes, and what generation without logits_to_keep pays).
        r["peak_rss_before_all"] = proc_status()["VmHWM"] / 1e9
        if hasattr(eng, "forward_all"):
            r["prefill_all_tps"] = spec["prefill_len"] / eng.forward_all(p)
    elif task == "long":
        (p,) = prompts_for(eng.n_vocab, 4, spec["long_len"])
        s, stamps, _ = eng.generate([p], spec["long_new"])
        r["long_prefill_tps"] = spec["long_len"] / (stamps[0] - s)
        r["long_decode_tps"] = (len(stamps) - 1) / (stamps[-1] - stamps[0])
    elif task == "memtest":
        if hasattr(eng, "tiers"):
            r["tiers_gb"] = eng.tiers()
        (p,) = prompts_for(eng.n_vocab, 5, spec["mem_prompt"])
        s, stamps, _ = eng.generate([p], spec["mem_new"])
        r["first_token_s"] = stamps[0] - s
        r["decode_tps"] = (len(stamps) - 1) / (stamps[-1] - stamps[0])
        r["decode_s_per_token"] = (stamps[-1] - stamps[0]) / max(1, len(stamps) - 1)
    peaks = sampler.stop()
    st = proc_status()
    r["peak_rss_gb"] = r.pop("peak_rss_before_all", st["VmHWM"] / 1e9)  # generation's peak
    r["peak_anon_gb"] = peaks["RssAnon"] / 1e9
    r["peak_file_gb"] = peaks["RssFile"] / 1e9
    if engine.startswith("transformers"):
        r["attn"] = eng.attn
    return r


def git_commit() -> str:
    """HEAD of this checkout, + "-dirty" when gemma_ref/ has uncommitted changes."""
    try:
        head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                              capture_output=True, text=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "gemma_ref"],
                               capture_output=True, text=True).stdout.strip()
        return head + ("-dirty" if dirty else "")
    except OSError:
        return "?"


def child_info(threads: int) -> dict:
    """Versions and thread configuration, as a child with the benchmark's environment sees them."""
    import numpy as np

    info = {"python": platform.python_version(), "numpy": np.__version__}
    try:
        cfg = np.show_config(mode="dicts")["Build Dependencies"]
        info["numpy_blas"] = " ".join(str(cfg["blas"].get(k, "")) for k in ("name", "version"))
    except Exception as e:  # noqa: BLE001 (informational only)
        info["numpy_blas"] = f"? ({e})"
    from importlib import metadata

    for mod, dist in (("torch", "torch"), ("transformers", "transformers"),
                      ("llama_cpp", "llama-cpp-python"), ("gguf", "gguf"),
                      ("ml_dtypes", "ml_dtypes"), ("accelerate", "accelerate")):
        try:
            __import__(mod)
            info[mod] = metadata.version(dist)
        except Exception as e:  # noqa: BLE001
            info[mod] = f"not available ({type(e).__name__})"
    try:
        import torch

        torch.set_num_threads(threads)
        info["torch_threads"] = torch.get_num_threads()
    except ImportError:
        pass
    try:
        from threadpoolctl import threadpool_info

        info["threadpools"] = sorted({f"{p['internal_api']} {p.get('version')} "
                                      f"{p.get('architecture') or ''} "
                                      f"{p['num_threads']} threads" for p in threadpool_info()})
    except ImportError:
        info["threadpools"] = ["threadpoolctl not installed"]
    return info


# --- the parent ----------------------------------------------------------------


def child_env(threads: int) -> dict:
    env = dict(os.environ)
    for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
              "BLIS_NUM_THREADS", "VECLIB_MAXIMUM_THREADS", "NUMEXPR_NUM_THREADS"):
        env[k] = str(threads)
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    env["TRANSFORMERS_VERBOSITY"] = "error"
    env["HF_HUB_OFFLINE"] = "1"
    return env


def cpu_busy_s() -> float:
    """CPU-seconds the whole machine has been busy (all cores, /proc/stat), or 0."""
    try:
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
        return (sum(v[:8]) - v[3] - v[4]) / os.sysconf("SC_CLK_TCK")  # minus idle, iowait
    except (OSError, ValueError, IndexError):
        return 0.0


def wait_idle(max_wait: float, log, threshold=0.3) -> float:
    """Wait (at most max_wait s) until other processes use < threshold cores; return their use."""
    t_end = time.monotonic() + max_wait
    while True:
        b0 = cpu_busy_s()
        time.sleep(1.0)
        busy = cpu_busy_s() - b0
        if busy < threshold or time.monotonic() >= t_end:
            if busy >= threshold:
                log(f"    machine still busy ({busy:.1f} cores used by other processes); going on")
            return busy
        log(f"    waiting: other processes use {busy:.1f} cores ...")
        time.sleep(4.0)


def run_child(spec: dict, timeout: float, log) -> dict:
    import resource

    cmd = [sys.executable, __file__, "--child", json.dumps(spec)]
    ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    b0, t0 = cpu_busy_s(), time.perf_counter()
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                           env=child_env(spec["threads"]))
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    wall, busy = time.perf_counter() - t0, cpu_busy_s() - b0
    ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    own = (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime)
    for line in p.stdout.splitlines():
        if line.startswith(MARK):
            r = json.loads(line[len(MARK):])
            r["process_wall_s"] = wall
            r["process_cpu_s"] = own
            # Cores kept busy by *other* processes while this child ran: contention.
            r["foreign_cores"] = max(0.0, (busy - own) / wall) if busy else None
            return r
    tail = (p.stderr or p.stdout).strip().splitlines()[-6:]
    log(f"    {spec['engine']} {spec['task']} failed (exit {p.returncode}):\n      "
        + "\n      ".join(tail))
    return {"error": tail[-1] if tail else f"exit {p.returncode}"}


def machine_info() -> dict:
    cpu = "?"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = 0
    try:
        for line in open("/proc/meminfo"):
            if line.startswith("MemTotal"):
                mem = int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                                capture_output=True, text=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "gemma_ref"],
                               capture_output=True, text=True).stdout.strip()
        commit += " (gemma_ref/ has uncommitted changes)" if dirty else ""
    except OSError:
        commit = "?"
    flags = ""
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("flags"):
                fl = line.split()
                flags = " ".join(f for f in ("avx2", "fma", "avx512f", "avx512_bf16", "amx_tile")
                                 if f in fl)
                break
    except OSError:
        pass
    return {"cpu": cpu, "cpu_flags": flags, "cores": os.cpu_count(), "mem_gb": mem / 1e9,
            "os": platform.platform(), "gemma_ref_commit": commit}


def f32_gguf(src: Path, log) -> Path:
    """An F32 copy of a GGUF (every tensor dequantized), cached beside gemma-ref's cache."""
    import numpy as np
    import gguf

    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "gemma_ref" / "bench"
    dst = base / f"{src.stem}-dequantized-f32.gguf"
    stamp = dst.with_suffix(".source")
    key = f"{src.resolve()} {src.stat().st_size} {src.stat().st_mtime_ns}"
    if dst.exists() and stamp.exists() and stamp.read_text() == key:
        return dst
    log(f"writing {dst} (every tensor of {src.name} dequantized to F32; once) ...")
    t0 = time.perf_counter()
    base.mkdir(parents=True, exist_ok=True)
    reader = gguf.GGUFReader(str(src))
    arch = reader.fields[gguf.Keys.General.ARCHITECTURE].contents()
    tmp = dst.with_suffix(f".part{os.getpid()}")
    writer = gguf.GGUFWriter(str(tmp), arch=arch, endianess=reader.endianess)
    for field in reader.fields.values():
        if field.name == gguf.Keys.General.ARCHITECTURE or field.name.startswith("GGUF."):
            continue
        value = field.contents()
        if field.name == gguf.Keys.General.FILE_TYPE:
            value = int(gguf.LlamaFileType.ALL_F32)
        vtype = field.types[0]
        sub = field.types[-1] if vtype == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(field.name, value, vtype, sub_type=sub)
    for t in reader.tensors:
        data = gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32, copy=False)
        writer.add_tensor(t.name, data, raw_dtype=gguf.GGMLQuantizationType.F32)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    os.replace(tmp, dst)
    stamp.write_text(key)
    log(f"  done in {time.perf_counter() - t0:.0f} s ({dst.stat().st_size / 1e9:.2f} GB)")
    return dst


def median(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


ROWS = [  # key, label, format, unit
    ("load_s", "load (s)", "{:.2f}"),
    ("ttft_s", "load-to-first-token (s)", "{:.2f}"),
    ("prefill_tps", "prefill {prefill_len} tok (tok/s)", "{:.1f}"),
    ("prefill_all_tps", "forward {prefill_len} tok, logits at every position (tok/s)", "{:.1f}"),
    ("decode_tps", "decode {decode_new} tok (tok/s)", "{:.2f}"),
    ("batch1_tps", "batch 1 generate (new tok/s)", "{:.2f}"),
    ("batchB_tps", "batch {batch} generate (new tok/s)", "{:.2f}"),
    ("batch_speedup", "batch {batch} / batch 1", "{:.2f}"),
    ("batch1_decode_tps", "batch 1 decode only (new tok/s)", "{:.2f}"),
    ("batchB_decode_tps", "batch {batch} decode only (new tok/s)", "{:.2f}"),
    ("batch_decode_speedup", "batch {batch} / batch 1, decode only", "{:.2f}"),
    ("peak_rss_gb", "peak RSS (GB)", "{:.2f}"),
    ("long_prefill_tps", "{long_len}-tok prompt: prefill (tok/s)", "{:.1f}"),
    ("long_decode_tps", "{long_len}-tok prompt: decode (tok/s)", "{:.2f}"),
    ("long_peak_rss_gb", "{long_len}-tok prompt: peak RSS (GB)", "{:.2f}"),
    ("foreign_cores", "other processes' CPU during runs (cores, median)", "{:.2f}"),
    ("foreign_cores_max", "other processes' CPU during runs (cores, max)", "{:.2f}"),
]
NO_RATIO = {"batch_speedup", "batch_decode_speedup", "foreign_cores", "foreign_cores_max"}


def summarize(results: dict, sizes: dict) -> dict:
    """engine -> metric -> median (and the per-repeat samples)."""
    out = {}
    for eng, runs in results.items():
        m = {}
        mains = [r for r in runs["main"] if "error" not in r]
        longs = [r for r in runs["long"] if "error" not in r]
        for k in ("load_s", "ttft_s", "prefill_tps", "prefill_all_tps", "decode_tps", "batch1_tps",
                  "batch1_decode_tps", "peak_rss_gb"):
            m[k] = median([r.get(k) for r in mains])
        B = sizes["batch"]
        for kind in ("", "_decode"):  # whole generation, decode steps only
            m[f"batchB{kind}_tps"] = median([r.get(f"batch{B}{kind}_tps") for r in mains])
            m[f"batch{kind}_speedup"] = median([r[f"batch{B}{kind}_tps"] / r[f"batch1{kind}_tps"]
                                                for r in mains if f"batch{B}{kind}_tps" in r])
        m["long_prefill_tps"] = median([r.get("long_prefill_tps") for r in longs])
        m["long_decode_tps"] = median([r.get("long_decode_tps") for r in longs])
        m["long_peak_rss_gb"] = median([r.get("peak_rss_gb") for r in longs])
        m["foreign_cores"] = median([r.get("foreign_cores") for r in mains + longs])
        m["foreign_cores_max"] = max((r.get("foreign_cores") or 0 for r in mains + longs),
                                     default=None)
        m["n_main"], m["n_long"] = len(mains), len(longs)
        m["errors"] = [r["error"] for r in runs["main"] + runs["long"] if "error" in r]
        m["discarded"] = len(runs.get("discarded", []))
        out[eng] = m
    return out


def agreement(results: dict) -> dict:
    """How many leading greedy ids each engine shares with transformers (same prompt)."""
    def ids(eng):
        rs = [r for r in results.get(eng, {}).get("main", []) if "ids" in r]
        return rs[0]["ids"] if rs else None

    ref = ids("transformers")
    out = {}
    for eng in results:
        mine = ids(eng)
        if ref is None or mine is None:
            continue
        n = 0
        while n < min(len(ref), len(mine)) and ref[n] == mine[n]:
            n += 1
        out[eng] = f"{n}/{len(ref)}"
    return out


def table(summary: dict, sizes: dict, labels: dict) -> str:
    engines = list(summary)
    ref = summary.get("transformers")
    head = "| metric | " + " | ".join(labels[e] for e in engines) + " |"
    lines = [head, "|---" * (len(engines) + 1) + "|"]
    for key, label, fmt in ROWS:
        cells = []
        for e in engines:
            v = summary[e].get(key)
            if v is None:
                cells.append("n/a")
                continue
            cell = fmt.format(v)
            if ref and e != "transformers" and ref.get(key) and key not in NO_RATIO:
                cell += f" ({v / ref[key]:.2f}×)"
            cells.append(cell)
        lines.append(f"| {label.format(**sizes)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog=__doc__.split("\n\n", 1)[1])
    ap.add_argument("--model", default=None,
                    help="a .gguf file or a checkpoint directory (default: the default model, "
                         "Gemma 3 270M Q4_K_M GGUF from the `demo` extra)")
    ap.add_argument("--engines", default=",".join(ENGINES),
                    help=f"comma-separated, from {', '.join(ENGINES)} (default: all available); "
                         "gemma-ref@REV measures gemma-ref as of git revision REV (exported with "
                         "git archive), e.g. gemma-ref@HEAD~3,gemma-ref to compare before/after")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="small sizes, 1 repeat: a smoke run")
    ap.add_argument("--no-long", action="store_true", help="skip the long-context run")
    ap.add_argument("--no-ceiling", action="store_true",
                    help="skip the products-only ceiling (scripts/bench_products.py, run once "
                         "per repeat between the engines; Gemma 3 270M's shapes)")
    ap.add_argument("--long-repeats", type=int, default=None,
                    help="repeats of the long-context run (default: --repeats)")
    ap.add_argument("--long-len", type=int, default=None, help="long prompt length (default 8192)")
    ap.add_argument("--hf-attn", default="sdpa", choices=["sdpa", "eager"],
                    help="transformers attention implementation (default sdpa)")
    ap.add_argument("--timeout", type=float, default=3600, help="per child process, seconds")
    ap.add_argument("--wait-idle", type=float, default=120,
                    help="before each run, wait up to this many seconds for other processes to "
                         "leave the CPU idle (0: don't wait); their CPU use during each run is "
                         "measured and reported either way")
    ap.add_argument("--max-foreign", type=float, default=0.25,
                    help="a run during which other processes used more than this many cores "
                         "is discarded and run again (see --retries)")
    ap.add_argument("--retries", type=int, default=2,
                    help="re-runs allowed per run for --max-foreign (default 2; the last is kept)")
    ap.add_argument("--json", type=Path, default=None, help="write all samples and medians here")
    ap.add_argument("--memory-test", type=Path, default=None, metavar="DIR",
                    help="instead: load DIR with gemma-ref under --max-memory-gb, decode a few "
                         "tokens, report load time, tok/s and peak RSS")
    ap.add_argument("--max-memory-gb", type=float, default=None,
                    help="--memory-test: gemma-ref's max_memory (GB of RAM for the weights; "
                         "default: gemma-ref's own, 85%% of the available memory)")
    ap.add_argument("--rev", default=None,
                    help="--memory-test: measure gemma-ref as of this git revision (default: "
                         "the working tree)")
    ap.add_argument("--mem-new", type=int, default=4, help="--memory-test: new tokens")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--child-info", type=int, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.child:
        print(MARK + json.dumps(child(json.loads(args.child))), flush=True)
        return
    if args.child_info is not None:
        print(MARK + json.dumps(child_info(args.child_info)), flush=True)
        return

    def log(msg):
        print(msg, file=sys.stderr, flush=True)

    machine = machine_info()
    info = run_child_info(args.threads)
    machine.update(info)
    if args.memory_test:
        return memory_test(args, machine, log)

    sys.path.insert(0, str(ROOT))
    if args.model is None:
        from gemma_ref import default_model

        model = default_model.path(progress=True)
    else:
        model = Path(args.model)
    model = Path(model).resolve()
    is_gguf = model.suffix == ".gguf"
    sizes = dict(QUICK if args.quick else FULL)
    if args.long_len:
        sizes["long_len"] = args.long_len
    repeats = 1 if args.quick and args.repeats == 3 else args.repeats

    engines, notes = [], []
    for e in [e.strip() for e in args.engines.split(",") if e.strip()]:
        if e.split("@")[0] not in ENGINES or ("@" in e and not e.startswith("gemma-ref@")):
            ap.error(f"unknown engine {e!r}; choose from {', '.join(ENGINES)}, gemma-ref@REV")
        if e.startswith("llama.cpp"):
            if not is_gguf:
                notes.append(f"{e}: skipped: --model is not a .gguf file")
                continue
            if "not available" in str(info.get("llama_cpp")):
                notes.append(f"{e}: skipped: llama_cpp is not importable "
                             f"(pip install llama-cpp-python)")
                continue
        engines.append(e)
    weights = {e: model for e in engines}
    if "llama.cpp-f32" in engines:
        weights["llama.cpp-f32"] = f32_gguf(model, log)
    quant = gguf_type(model) if is_gguf else None
    labels = {"gemma-ref": "gemma-ref (f32)",
              "transformers": f"transformers (f32, {args.hf_attn})",
              "transformers-loop": f"transformers loop (f32, {args.hf_attn}, logits_to_keep=1)",
              "llama.cpp": f"llama.cpp ({quant or 'gguf'})",
              "llama.cpp-f32": "llama.cpp (F32)"}
    sources = {}  # gemma-ref@REV -> (exported source dir, short commit)
    for e in engines:
        if e.startswith("gemma-ref@"):
            sources[e] = export_rev(e.split("@", 1)[1])
            labels[e] = f"gemma-ref@{sources[e][1]} (f32)"

    results = {e: {"main": [], "long": []} for e in engines}
    tasks = ["main"] + ([] if args.no_long else ["long"])
    long_repeats = repeats if args.long_repeats is None else args.long_repeats
    ceilings = []  # bench_products.py's totals, one per repeat
    for r in range(repeats):
        if not args.no_ceiling:
            log(f"[repeat {r + 1}/{repeats}] products-only ceiling ...")
            if args.wait_idle:
                wait_idle(args.wait_idle, log)
            ceilings.append(run_ceiling(args.threads, sizes, args.timeout, log))
        order = engines[r % len(engines):] + engines[:r % len(engines)]
        for task in tasks:
            if task == "long" and r >= long_repeats:
                continue
            for e in order:
                n_ctx = (sizes["long_len"] + sizes["long_new"] if task == "long"
                         else max(sizes["prefill_len"] + sizes["decode_new"],
                                  sizes["batch_prompt"] + sizes["batch_new"]))
                spec = dict(sizes, engine=e, task=task, model=str(weights[e]),
                            threads=args.threads, hf_attn=args.hf_attn,
                            n_ctx=n_ctx + 16, max_memory=None)
                if e in sources:
                    spec["gemma_ref_src"], spec["gemma_ref_rev"] = sources[e]
                log(f"[repeat {r + 1}/{repeats}] {e} {task} ...")
                for attempt in range(1 + args.retries):
                    if args.wait_idle:
                        wait_idle(args.wait_idle, log)
                    res = run_child(spec, args.timeout, log)
                    res["attempt"] = attempt + 1
                    busy = res.get("foreign_cores") or 0
                    if "error" in res or busy <= args.max_foreign:
                        break
                    if attempt < args.retries:
                        log(f"    other processes used {busy:.2f} cores during the run "
                            f"(> --max-foreign {args.max_foreign}): discarded, running again")
                        results[e].setdefault("discarded", []).append(res)
                if "error" not in res:
                    log("    " + ", ".join(f"{k}={v:.3g}" for k, v in res.items()
                                          if isinstance(v, float)))
                results[e][task].append(res)

    summary = summarize(results, sizes)
    ceiling_md = ceiling_rows(ceilings, summary, labels, sizes) if ceilings else []
    agree = agreement(results)
    attn = {r.get("attn") for r in results.get("transformers", {}).get("main", []) if "attn" in r}
    commits = sorted({r.get("gemma_ref_commit", "?") for e in engines if e.startswith("gemma-ref")
                      for r in results[e]["main"] + results[e]["long"] if "error" not in r})
    if commits:
        machine["gemma_ref_commit"] = ", ".join(commits) + " (as the gemma-ref runs saw it)"
    md = report(args, machine, model, sizes, repeats, summary, labels, agree, notes, attn, quant)
    md += "\n".join([""] + ceiling_md) if ceiling_md else ""
    print(md)
    if args.json:
        args.json.write_text(json.dumps(dict(machine=machine, model=str(model), sizes=sizes,
                                             repeats=repeats, threads=args.threads,
                                             weights={e: str(w) for e, w in weights.items()},
                                             results=results, summary=summary,
                                             agreement=agree, notes=notes), indent=2))


def export_rev(rev: str) -> tuple[str, str]:
    """`git archive` REV's gemma_ref/ into the bench cache: (directory for sys.path, short sha).

    Lets one run compare revisions (`--engines gemma-ref@abc123,gemma-ref,...`) and pins
    the code measured while others keep committing to the working tree.
    """
    sha = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--verify", rev + "^{commit}"],
                         capture_output=True, text=True, check=True).stdout.strip()
    base = (Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "gemma_ref"
            / "bench" / f"src-{sha}")
    if not (base / "gemma_ref" / "__init__.py").exists():
        base.mkdir(parents=True, exist_ok=True)
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", sha, "gemma_ref"],
                                 capture_output=True, check=True).stdout
        subprocess.run(["tar", "-x", "-C", str(base)], input=archive, check=True)
    return str(base), sha[:7]


def gguf_type(path: Path) -> str:
    """The GGUF's file type name (e.g. MOSTLY_Q4_K_M -> Q4_K_M)."""
    try:
        import gguf

        r = gguf.GGUFReader(str(path))
        ft = r.fields.get(gguf.Keys.General.FILE_TYPE)
        return gguf.LlamaFileType(int(ft.contents())).name.replace("MOSTLY_", "") if ft else "gguf"
    except Exception:  # noqa: BLE001 (a label only)
        return "gguf"


def run_ceiling(threads: int, sizes: dict, timeout: float, log) -> dict:
    """scripts/bench_products.py's per-step product times, in a process of its own."""
    out = Path(tempfile.mkdtemp()) / "ceiling.json"
    cmd = [sys.executable, str(ROOT / "scripts" / "bench_products.py"), "--threads", str(threads),
           "--batch", str(sizes["batch"]), "--prefill", str(sizes["prefill_len"]),
           "--repeats", "5", "--json", str(out)]
    env = child_env(threads)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return {}
    if not out.exists():
        log("    products-only ceiling failed: " + (p.stderr.strip().splitlines() or ["?"])[-1])
        return {}
    return json.loads(out.read_text())


def ceiling_rows(ceilings: list, summary: dict, labels: dict, sizes: dict) -> list:
    """Markdown lines: the products-only ceiling, and each engine's ratio to NumPy's."""
    ceilings = [c for c in ceilings if c]
    if not ceilings:
        return ["products-only ceiling: failed"]
    libs = list(ceilings[0])
    B, n = sizes["batch"], sizes["prefill_len"]

    def tps(lib, key, tokens):
        return median([tokens / (c[lib][key] / 1e3) for c in ceilings if key in c.get(lib, {})])

    ceil = {lib: {"prefill_tps": tps(lib, "prefill_ms", n), "batch1_decode_tps": tps(lib, "batch1_ms", 1),
                  "batchB_decode_tps": tps(lib, "batchB_ms", B)} for lib in libs}
    rows = [("prefill_tps", f"prefill {n} tok, generation path (tok/s)"),
            ("batch1_decode_tps", "batch 1 decode only (tok/s)"),
            ("batchB_decode_tps", f"batch {B} decode only (new tok/s)")]
    lines = ["", f"Ceiling: the matrix products alone (scripts/bench_products.py, Gemma 3 270M "
             f"shapes, random float32 weights; median of {len(ceilings)} runs, one per repeat, "
             f"between the engines); no engine on that library can be faster. Each engine's "
             f"ratio to NumPy's ceiling:", "",
             "| metric | " + " | ".join(f"ceiling: {lib}" for lib in libs) + " | "
             + " | ".join(f"{labels.get(e, e)} / numpy ceiling" for e in summary) + " |",
             "|---" * (1 + len(libs) + len(summary)) + "|"]
    numpy_lib = next((lib for lib in libs if lib.startswith("numpy")), libs[0])
    for key, name in rows:
        cells = [f"{ceil[lib][key]:.1f}" if ceil[lib][key] else "n/a" for lib in libs]
        for e, m in summary.items():
            v, c = m.get(key), ceil[numpy_lib][key]
            cells.append(f"{v / c:.2f}x" if v and c else "n/a")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    ways = [median([c[numpy_lib][k] for c in ceilings if k in c.get(numpy_lib, {})] or [0])
            for k in ("prefill_split_ms", "prefill_blas_threads_ms")]
    if all(ways):
        lines += ["", f"NumPy's prefill products: {ways[0]:.1f} ms split between gemma-ref's threads "
                      f"(as gemma-ref runs them), {ways[1]:.1f} ms on OpenBLAS's own threads; its "
                      f"ceiling is the faster."]
    return lines


def run_child_info(threads: int) -> dict:
    p = subprocess.run([sys.executable, __file__, "--child-info", str(threads)],
                       capture_output=True, text=True, env=child_env(threads))
    for line in p.stdout.splitlines():
        if line.startswith(MARK):
            return json.loads(line[len(MARK):])
    return {"info_error": p.stderr.strip()[-300:]}


def machine_md(machine: dict, threads: int) -> str:
    return "\n".join([
        f"- CPU: {machine['cpu']} ({machine['cores']} cores visible; {machine['cpu_flags']}), "
        f"{machine['mem_gb']:.1f} GB RAM, {machine['os']}",
        f"- threads per engine: {threads} (OMP/OPENBLAS/MKL_NUM_THREADS, "
        f"torch.set_num_threads -> {machine.get('torch_threads', '?')}, llama.cpp n_threads)",
        f"- Python {machine.get('python')}, NumPy {machine.get('numpy')} "
        f"(BLAS: {machine.get('numpy_blas')}; threadpools: "
        f"{'; '.join(machine.get('threadpools', []))})",
        f"- torch {machine.get('torch')}, transformers {machine.get('transformers')}, "
        f"llama-cpp-python {machine.get('llama_cpp')}, gguf {machine.get('gguf')}, "
        f"accelerate {machine.get('accelerate')}",
        f"- gemma-ref commit {machine['gemma_ref_commit']}",
    ])


def report(args, machine, model, sizes, repeats, summary, labels, agree, notes, attn, quant):
    cmd = "python scripts/bench.py " + " ".join(sys.argv[1:])
    out = [f"### Benchmark: `{model.name}`", "",
           f"Command: `{cmd}`  ", f"Medians of {repeats} repeat(s)"
           + ("" if args.no_long else f" (long context: {min(repeats, args.long_repeats if args.long_repeats is not None else repeats)})")
           + "; each engine and task in its "
           f"own process; engines alternate. Ratio in parentheses = engine ÷ transformers "
           f"(tok/s: >1 is faster; seconds and GB: <1 is better).", "",
           table(summary, sizes, labels), ""]
    if agree:
        out.append("Greedy ids on the prefill prompt equal to transformers' (leading tokens): "
                   + ", ".join(f"{labels[e]} {v}" for e, v in agree.items()
                               if e != "transformers"))
        out.append("")
    extra = []
    if "llama.cpp" in summary and quant:
        extra.append(f"llama.cpp ({quant}) computes with the quantized weights as stored "
                     f"(not float32); llama.cpp (F32) runs the same GGUF with every tensor "
                     f"dequantized to F32, i.e. the float32 weights the other engines use.")
    if attn:
        extra.append(f"transformers attention implementation: {', '.join(sorted(attn))}.")
    extra.append("Peak RSS = VmHWM of the engine's process (load + every step of that task); "
                 "it counts memory-mapped weight pages that were touched.")
    disc = {labels[e]: m["discarded"] for e, m in summary.items() if m["discarded"]}
    extra.append(f"Runs during which other processes used > {args.max_foreign} cores were "
                 f"discarded and re-run (up to {args.retries} times; the last is kept)"
                 + (": discarded " + ", ".join(f"{k} {v}" for k, v in disc.items()) if disc
                    else ": none needed") + ".")
    for e, m in summary.items():
        if m["errors"]:
            extra.append(f"{labels[e]}: {len(m['errors'])} failed run(s): {m['errors'][0]}")
    out += [f"- {x}" for x in extra + notes]
    out += ["", "Machine:", machine_md(machine, args.threads)]
    return "\n".join(out)


def memory_test(args, machine, log):
    d = args.memory_test.resolve()
    budget = None if args.max_memory_gb is None else int(args.max_memory_gb * 1e9)
    spec = dict(engine="gemma-ref", task="memtest", model=str(d), threads=args.threads,
                max_memory=budget, mem_prompt=8, mem_new=args.mem_new, hf_attn=args.hf_attn)
    if args.rev:
        spec["gemma_ref_src"], spec["gemma_ref_rev"] = export_rev(args.rev)
    size = sum(f.stat().st_size for f in d.glob("*.safetensors"))
    cfg = json.loads((d / "config.json").read_text())
    log(f"memory test: {d} ({size / 1e9:.1f} GB on disk), max_memory="
        f"{'default' if budget is None else f'{args.max_memory_gb} GB'}")
    if args.wait_idle:
        wait_idle(args.wait_idle, log)
    r = run_child(spec, args.timeout, log)
    machine["gemma_ref_commit"] = r.get("gemma_ref_commit", machine["gemma_ref_commit"])
    cmd = "python scripts/bench.py " + " ".join(sys.argv[1:])
    lines = [f"### Memory test: `{d.name}` ({cfg.get('model_type')}, "
             f"{cfg.get('num_hidden_layers')} layers, {size / 1e9:.1f} GB of "
             f"{cfg.get('dtype') or cfg.get('torch_dtype')} safetensors)", "",
             f"Command: `{cmd}`", ""]
    if "error" in r:
        lines.append(f"FAILED: {r['error']}")
    else:
        lines += ["| metric | gemma-ref |", "|---|---|",
                  f"| max_memory (GB of RAM for weights) | "
                  f"{'default (85% of available)' if budget is None else f'{args.max_memory_gb:g}'} |",
                  f"| weights held (GB) | " + ", ".join(
                      f"{k} {v:.1f}" for k, v in r.get("tiers_gb", {}).items()) + " |",
                  f"| load (s) | {r['load_s']:.1f} |",
                  f"| first token, 8-token prompt (s) | {r['first_token_s']:.1f} |",
                  f"| decode (tok/s) | {r['decode_tps']:.3f} |",
                  f"| decode (s/token) | {r['decode_s_per_token']:.1f} |",
                  f"| peak RSS, VmHWM (GB) | {r['peak_rss_gb']:.2f} |",
                  f"| peak anonymous RSS (GB, sampled) | {r['peak_anon_gb']:.2f} |",
                  f"| peak file-backed RSS (GB, sampled: mmapped weights) | "
                  f"{r['peak_file_gb']:.2f} |",
                  f"| process wall time (s) | {r['process_wall_s']:.1f} |",
                  f"| gemma-ref commit | {r.get('gemma_ref_commit')} |",
                  f"| other processes' CPU during the run (cores) | "
                  f"{r.get('foreign_cores') or 0:.2f} |"]
    lines += ["", "Machine:", machine_md(machine, args.threads)]
    print("\n".join(lines))
    if args.json:
        args.json.write_text(json.dumps(dict(machine=machine, spec=spec, result=r), indent=2))


if __name__ == "__main__":
    main()
