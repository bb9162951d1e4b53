"""Family members close to the generation models: VaultGemma, ShieldGemma 2, Gemma 4 12B Unified.

Their goldens were made by scripts/make_family_goldens.py with transformers 5.25
(float32, eager attention): VaultGemma's in tests/data/tiny/vaultgemma-mqa (also read by
test_goldens_tiny.py and, as a seeded variant, by test_invariants.py), the others in
tests/data/family/*/ (see their PROVENANCE.md).
"""

import json
import shutil

import numpy as np
import pytest

from conftest import DATA
from gemma_ref import Model
from gemma_ref.cli import main
from gemma_ref.config import GemmaConfig
from gemma_ref.errors import GemmaRefError

VAULT = DATA / "tiny" / "vaultgemma-mqa"


# --- VaultGemma ------------------------------------------------------------------------


def test_vaultgemma_is_gemma2_without_output_norms():
    raw = json.loads((VAULT / "config.json").read_text())
    vault = GemmaConfig.from_dict(raw)
    gemma2 = GemmaConfig.from_dict({**raw, "model_type": "gemma2"})
    assert (vault.sandwich_norms, gemma2.sandwich_norms) == (False, True)
    assert vault.mlp_input_norm == gemma2.mlp_input_norm == "pre_feedforward_layernorm"
    assert vault.attn_logit_softcapping == 5.0 and vault.final_logit_softcapping == 3.0
    # no layer_types: Gemma 2's alternation, as VaultGemmaConfig's default
    del raw["layer_types"]
    assert GemmaConfig.from_dict(raw).layer_types == ("sliding_attention", "full_attention") * 2


def test_vaultgemma_parameters_are_the_files():
    from safetensors.numpy import load_file

    model = Model.from_pretrained(VAULT)
    tensors = load_file(str(VAULT / "model.safetensors"))
    assert model.config.num_parameters == sum(t.size for t in tensors.values())
    assert not any("post_attention_layernorm" in k or "post_feedforward" in k for k in tensors)


def test_vaultgemma_checkpoint_with_gemma2_norms_is_refused(tmp_path, capsys):
    """A stray post-attention norm is a strict-loading error naming the tensor."""
    from safetensors.numpy import load_file, save_file

    d = tmp_path / "vault"
    shutil.copytree(VAULT, d)
    tensors = load_file(str(VAULT / "model.safetensors"))
    tensors["model.layers.0.post_attention_layernorm.weight"] = np.zeros(48, np.float32)
    save_file(tensors, str(d / "model.safetensors"))
    with pytest.raises(GemmaRefError, match="post_attention_layernorm"):
        Model.from_pretrained(d)
    assert main(["generate", "--model", str(d), "hello"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("gemma-ref: error:") and "post_attention_layernorm" in err[0]


def test_vaultgemma_listed_and_described(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert any(line.split()[:1] == ["vaultgemma-1b"] and line.endswith("google/vaultgemma-1b")
               for line in out.splitlines())
    assert main(["info", "--model", str(VAULT)]) == 0
    out = capsys.readouterr().out
    assert "vaultgemma" in out and "none on their outputs" in out
