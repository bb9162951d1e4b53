"""gemma-ref's cache: content keys, many processes at once, interruption, stale leftovers,
and `gemma-ref cache` (issue 15). Every test uses its own XDG_CACHE_HOME."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from test_gguf_reader import write_tiny

from gemma_ref import GemmaRefError, Model, cache, loader
from gemma_ref.cli import main

ROOT = Path(__file__).parent.parent


@pytest.fixture
def xdg(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    return tmp_path / "xdg" / "gemma_ref"


def entries(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name != ".lock")


def test_same_content_in_two_places_is_converted_once(tmp_path, xdg):
    a = write_tiny(tmp_path / "a.gguf")
    b = tmp_path / "elsewhere" / "b.gguf"
    b.parent.mkdir()
    shutil.copy(a, b)
    ma, mb = Model.from_pretrained(a, progress=False), Model.from_pretrained(b, progress=False)
    assert ma.checkpoint == mb.checkpoint == xdg / "gguf" / cache.sha256(a)[:16]
    assert entries(xdg / "gguf") == [ma.checkpoint.name]
    hashes = json.loads((xdg / "hashes.json").read_text())  # each file hashed once, remembered
    assert {hashes[str(p.resolve())]["sha256"] for p in (a, b)} == {cache.sha256(a)}


def test_a_changed_file_is_hashed_again(tmp_path, xdg):
    path = write_tiny(tmp_path / "a.gguf")
    first = Model.from_pretrained(path, progress=False).checkpoint
    write_tiny(path, tensors=None, tokenizer_model="llama", drop=())  # same bytes again: same key
    assert Model.from_pretrained(path, progress=False).checkpoint == first
    from test_gguf_reader import tiny_tensors

    write_tiny(path, tensors=tiny_tensors("gemma3", seed=5))  # other weights: another entry
    assert Model.from_pretrained(path, progress=False).checkpoint != first


def test_eight_processes_converting_at_once(tmp_path, xdg):
    """All succeed, one conversion is made, nothing temporary is left (3 of 8 died before)."""
    path = write_tiny(tmp_path / "g.gguf")
    code = ("import sys; from gemma_ref import Model; "
            "m = Model.from_pretrained(sys.argv[1], progress=False); print(m.checkpoint)")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "XDG_CACHE_HOME": str(xdg.parent)}
    procs = [subprocess.Popen([sys.executable, "-c", code, str(path)], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(8)]
    results = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0] * 8, [err for _, err in results]
    assert len({out.strip() for out, _ in results}) == 1
    assert entries(xdg / "gguf") == [Path(results[0][0].strip()).name]


def test_interrupted_conversion_leaves_nothing(tmp_path, xdg, monkeypatch, capsys):
    path = write_tiny(tmp_path / "g.gguf")

    def interrupted(target, tensors):
        target.write_bytes(b"half a file")
        raise KeyboardInterrupt

    monkeypatch.setattr(loader, "write_safetensors", interrupted)
    assert main(["generate", "--model", str(path), "hi"]) == 130  # Ctrl-C: the shell's 128 + 2
    assert entries(xdg / "gguf") == []
    monkeypatch.undo()


def test_sigint_mid_conversion_cleans_up(tmp_path, xdg):
    """A real SIGINT while the converted file is being written (a slowed-down writer)."""
    import signal
    import time

    path = write_tiny(tmp_path / "g.gguf")
    code = ("import sys, time; from gemma_ref import loader, Model\n"
            "real = loader.write_safetensors\n"
            "def slow(p, t):\n"
            "    real(p, t); print('writing', flush=True); time.sleep(60)\n"
            "loader.write_safetensors = slow\n"
            "from gemma_ref.cli import main; sys.exit(main(['info', '--model', sys.argv[1]]))")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "XDG_CACHE_HOME": str(xdg.parent)}
    p = subprocess.Popen([sys.executable, "-c", code, str(path)], env=env, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "writing"
    assert [e for e in entries(xdg / "gguf") if ".tmp" in e]  # mid-conversion: a temporary dir
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=60)
    assert p.returncode == 130 and "Traceback" not in err, err
    assert entries(xdg / "gguf") == []


def test_stale_temporaries_of_dead_processes_are_removed(tmp_path, xdg):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True).stdout.strip()
    (xdg / "gguf" / f"0123456789abcdef.tmp{dead}").mkdir(parents=True)  # a SIGKILLed conversion
    (xdg / "gguf" / f"0123456789abcdef.tmp{dead}" / "model.safetensors").write_bytes(b"x" * 100)
    (xdg / f"gemma-3-270m-q4_k_m.gguf.part{dead}").write_bytes(b"x")  # a killed assembly
    alive = xdg / "gguf" / f"fedcba9876543210.tmp{os.getppid()}"  # a live process: left alone
    alive.mkdir()
    assert main(["cache"]) == 0
    path = write_tiny(tmp_path / "g.gguf")
    m = Model.from_pretrained(path, progress=False)
    assert entries(xdg / "gguf") == sorted([m.checkpoint.name, alive.name])
    cache.remove_stale(xdg)
    assert not list(xdg.glob("*.part*"))


def test_cache_command_lists_and_removes(tmp_path, xdg, capsys):
    path = write_tiny(tmp_path / "g.gguf")
    m = Model.from_pretrained(path, progress=False)
    assert main(["cache", "--json"]) == 0
    listing = json.loads(capsys.readouterr().out)
    name = f"gguf/{m.checkpoint.name}"
    [entry] = [e for e in listing["entries"] if e["name"] == name]
    assert entry["bytes"] == sum(f.stat().st_size for f in m.checkpoint.iterdir())
    assert str(path.resolve()) in entry["what"]
    assert main(["cache"]) == 0
    assert name in capsys.readouterr().out
    assert main(["cache", "rm", name]) == 0
    assert f"removed {name}" in capsys.readouterr().out and not m.checkpoint.exists()
    assert main(["cache", "rm", "--all"]) == 0
    assert entries(xdg / "gguf") == []


def test_cache_command_names_what_it_lists_with_sizes_a_person_reads(xdg, capsys):
    (xdg / "bench").mkdir(parents=True)
    (xdg / "bench" / "f32.gguf").write_bytes(b"x" * 2500)
    (xdg / "gguf" / "0123456789abcdef").mkdir(parents=True)  # a conversion without its source.json
    assert main(["cache"]) == 0
    out = capsys.readouterr().out
    assert "2.5 KB  bench" in out and "scripts/bench.py's" in out
    assert "gguf/0123456789abcdef" in out and "incomplete (no source.json)" in out


def test_cache_check_happens_before_reading_the_gguf(tmp_path, monkeypatch, capsys):
    """A cache we cannot fill fails at once, not after the (slow) GGUF read."""
    from gemma_ref import gguf

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "file"))
    (tmp_path / "file").write_text("")
    monkeypatch.setattr(gguf, "read_gguf", lambda *a, **k: pytest.fail("read before the check"))
    with pytest.raises(GemmaRefError, match="XDG_CACHE_HOME"):
        loader.gguf_as_checkpoint(write_tiny(tmp_path / "g.gguf"))


def test_a_real_read_only_cache(tmp_path, monkeypatch, capsys):
    """A read-only file system (a tmpfs remounted read-only; needs root, else skipped): a new
    GGUF is refused at once, naming the directory; one converted earlier still loads."""
    ro = tmp_path / "ro"
    ro.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(ro)],
                      capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here")
    try:
        monkeypatch.setenv("XDG_CACHE_HOME", str(ro))
        old = write_tiny(tmp_path / "old.gguf")
        converted = Model.from_pretrained(old, progress=False).checkpoint
        assert subprocess.run(["mount", "-o", "remount,ro", str(ro)]).returncode == 0
        assert Model.from_pretrained(old, progress=False).checkpoint == converted
        from test_gguf_reader import tiny_tensors

        new = write_tiny(tmp_path / "new.gguf", tensors=tiny_tensors("gemma3", seed=9))
        assert main(["generate", "--model", str(new), "hi"]) == 1
        err = capsys.readouterr().err
        assert err.count("gemma-ref: error:") == 1 and "Traceback" not in err
        assert f"cannot write gemma-ref's cache directory {ro}/gemma_ref/gguf (Read-only file system)" in err
        assert "XDG_CACHE_HOME" in err
    finally:
        subprocess.run(["umount", str(ro)])
