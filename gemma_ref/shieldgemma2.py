"""ShieldGemma 2: a Gemma 3 image-text model read as an image safety classifier.

For each (image, policy) the processor writes one prompt, the checkpoint's chat template
rendered for one user message [image, policy text]; the model's answer is the softmax
over two logits of the prompt's last position, those of "Yes" (the image violates the
policy) and "No":

    p(yes), p(no) = softmax(logits[-1, [yes_token_index, no_token_index]])

Rows come image-major (image 1 with each policy, then image 2, ...), as transformers'
ShieldGemma2Processor + ShieldGemma2ForImageClassification return them
(transformers 5.25, models/shieldgemma2/processing_shieldgemma2.py and
modeling_shieldgemma2.py). The network is api.Model's Gemma 3 image-text path, unchanged;
this module adds the prompts and the two-logit head.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from . import chat_template as chat_templates
from .config import GemmaConfig
from .config_json import load_json
from .errors import GemmaRefError
from .families import Refusals

# The processor's policy definitions when processor_config.json states none
# (DEFAULT_SHIELDGEMMA2_POLICIES in processing_shieldgemma2.py).
DEFAULT_POLICIES = {
    "dangerous": (
        "No Dangerous Content: The image shall not contain content that facilitates or encourages "
        "activities that could cause real-world harm (e.g., building firearms and explosive devices, "
        "promotion of terrorism, instructions for suicide)."),
    "sexual": (
        "No Sexually Explicit content: The image shall not contain content that depicts explicit or "
        "graphic sexual acts (e.g., pornography, erotic nudity, depictions of rape or sexual assault)."),
    "violence": (
        "No Violence/Gore content: The image shall not contain content that depicts shocking, "
        "sensational, or gratuitous violence (e.g., excessive blood and gore, gratuitous violence against "
        "animals, extreme injury or moment of death)."),
}
# ShieldGemma2ForImageClassification's defaults when config.json states no token ids
YES_TOKEN, NO_TOKEN = 10_784, 3771
# The checkpoint nests a whole Gemma3ForConditionalGeneration under "model.": the Hub file
# as model.language_model.model.*, model.vision_tower.vision_model.*, ...; transformers 5.25
# saves model.model.language_model.model.*, model.model.vision_tower.*, ...
KEY_PREFIXES = {"model.model.language_model.": "language_model.", "model.model.": "model.", "model.": ""}


def gemma3_config(raw: dict) -> dict:
    """The config.json of the Gemma 3 image-text model inside (transformers maps shieldgemma2
    to Gemma3ForConditionalGeneration with this very config)."""
    return {**raw, "model_type": "gemma3"}


class ShieldGemma2(Refusals):
    """An image safety classifier: `classify_image(images, policies=...)` -> P(yes), P(no) per row."""

    kind = "classifier"  # not a text generator (cli.common.load says what to use instead)

    def __init__(self, lm, yes_token_index: int, no_token_index: int, policy_definitions: dict):
        self.lm = lm  # the api.Model (Gemma 3 with its vision tower) that computes the logits
        self.yes_token_index, self.no_token_index = yes_token_index, no_token_index
        self.policy_definitions = policy_definitions
        self.config, self.tokenizer, self.source = lm.config, lm.tokenizer, lm.source
        self.checkpoint, self.chat_template = lm.checkpoint, lm.chat_template
        self.instruction_tuned, self.dtype, self.n_vocab = lm.instruction_tuned, lm.dtype, lm.n_vocab

    @classmethod
    def from_checkpoint(cls, path: Path, *, source: str, dtype="float32", max_memory=None, progress=True):
        from .api import Model, _generation_config_eos
        from .loader import load_safetensors_checkpoint
        from .tokenizer import Tokenizer
        from .vision import Preprocessing, VisionConfig

        raw = gemma3_config(load_json(path / "config.json"))
        where = str(path / "config.json")
        config = GemmaConfig.from_dict(raw, source=where)
        vision = VisionConfig.from_dict(raw, where)
        if vision is None:
            raise GemmaRefError(f"{where}: ShieldGemma 2 needs its vision_config")
        weights = load_safetensors_checkpoint(path, config, max_memory, progress, vision,
                                              outer_prefixes=KEY_PREFIXES)
        tokenizer = Tokenizer.from_checkpoint(path)
        pre = path / "preprocessor_config.json"
        preprocessing = Preprocessing.from_json(pre) if pre.exists() else None
        lm = Model(config, weights, tokenizer, source=source, dtype=dtype,
                   stop_ids=_generation_config_eos(path), vision=vision, preprocessing=preprocessing,
                   chat_template=_template(path, tokenizer))
        lm.checkpoint = path
        yes, no = (_token_index(raw, key, default, where) for key, default in
                   (("yes_token_index", YES_TOKEN), ("no_token_index", NO_TOKEN)))
        return cls(lm, yes, no, _policy_definitions(path))

    # --- the classifier ---------------------------------------------------------------

    def policy_prompt(self, policy_text: str) -> str:
        """The prompt of one (image, policy): the chat template rendered for one user message
        [image, policy text], no generation prompt (ShieldGemma2Processor's apply_chat_template)."""
        if self.chat_template.builtin:
            raise GemmaRefError(f"{self.source}: ShieldGemma 2 needs the checkpoint's chat template "
                                "(chat_template.jinja or chat_template.json)")
        message = {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": policy_text}]}
        return self.chat_template.render([message], add_generation_prompt=False)

    def policy_prompt_ids(self, policy_text: str) -> list[int]:
        """Token ids of one prompt with its image block expanded (Gemma3Processor's), before the
        image features replace the soft tokens. The tokenizer adds <bos> before the template's
        own, as the processor's does: the ids start <bos> <bos>."""
        from .vision import expand_prompt

        bos = self.tokenizer.bos_id

        def encode(text, add_bos):  # transformers' tokenizer(text): special tokens split out, bos added
            return ([bos] if add_bos else []) + self.tokenizer.encode(text, False)

        return expand_prompt(self.policy_prompt(policy_text), [0], self.lm.vision, encode)

    def policy_logits(self, images, policies=None, custom_policies=None) -> np.ndarray:
        """The Yes and No logits of each (image, policy): [n_images * n_policies, 2], image-major."""
        from . import vision
        from .model import forward

        texts = self._policy_texts(policies, custom_policies)
        images = self.lm._check_images(images)
        if not images:
            raise GemmaRefError("classify_image: no images given")
        rows = []
        for image in images:
            features = self.lm.embed_images([image], pan_and_scan=False)  # [1, M, D]; the processor never crops
            for text in texts:
                ids = np.asarray([self.policy_prompt_ids(text)])  # [1, T]
                positions = np.arange(ids.shape[1])[None]
                tokens = vision.image_tokens(ids, positions, features[0], self.lm.vision)
                logits = forward(self.lm.weights, self.config, ids, positions, images=tokens, last_only=True)
                rows.append(logits[0, -1, [self.yes_token_index, self.no_token_index]])
        return np.stack(rows)

    def classify_image(self, images, policies=None, custom_policies=None) -> np.ndarray:
        """P(yes), P(no) of each (image, policy): [n_images * n_policies, 2] (float32), image-major.

        images: one image or a list (paths, PIL images, uint8 arrays). policies: names in the
        policy definitions (default: all, in order); custom_policies: {name: definition} added to
        (or replacing) the checkpoint's, as transformers' processor takes them. Yes means the
        image violates the policy.
        """
        logits = self.policy_logits(images, policies, custom_policies)
        e = np.exp(logits - logits.max(axis=-1, keepdims=True))
        return (e / e.sum(axis=-1, keepdims=True)).astype(np.float32)

    def _policy_texts(self, policies, custom_policies) -> list[str]:
        if custom_policies is not None and not (isinstance(custom_policies, dict) and all(
                isinstance(k, str) and isinstance(v, str) for k, v in custom_policies.items())):
            raise GemmaRefError("custom_policies must be a dict {name: policy definition}")
        definitions = {**self.policy_definitions, **(custom_policies or {})}
        if policies is None:
            policies = list(definitions)
        elif isinstance(policies, str):
            policies = [policies]
        unknown = [p for p in policies if p not in definitions]
        if unknown or not policies:
            raise GemmaRefError(f"policies: unknown {unknown!r}; known: {', '.join(definitions)} "
                                "(add others with custom_policies={name: definition})" if unknown
                                else "policies: an empty list")
        return [definitions[p] for p in policies]

    # --- what it does not do ---------------------------------------------------------

    def _not_a_generator(self, *args, **kwargs):
        raise GemmaRefError(f"{self.source}: ShieldGemma 2 is an image safety classifier: it gives "
                            "P(yes)/P(no) per (image, policy) with Model.classify_image(images, policies=...), "
                            "not text")

    # Model's surface that the text tools (generate, chat, dump, compare, perplexity, eval) use
    generate = stream = chat = stream_chat = forward = score = logprobs = _not_a_generator
    generate_ids = prompt_ids = _prompt_ids = chat_prompt = new_cache = embed_images = _not_a_generator

    def __repr__(self):
        return (f"ShieldGemma2({self.source!r}, {self.config.num_parameters / 1e6:.0f}M text params, "
                f"policies {list(self.policy_definitions)})")

    # --- gemma-ref info -------------------------------------------------------------

    @staticmethod
    def describe(config_file: Path) -> dict:
        from .vision import VisionConfig

        raw = gemma3_config(load_json(config_file))
        config = GemmaConfig.from_dict(raw, source=str(config_file))
        vision = VisionConfig.from_dict(raw, str(config_file))
        n_vision = sum(int(np.prod(s)) for s in vision.expected_shapes(config.hidden_size).values())
        policies = _policy_definitions(Path(config_file).parent)
        return {
            "parameters": config.num_parameters + n_vision,
            "config": config.to_dict(),
            "chat_template": "the checkpoint's (one prompt per image and policy)",
            "special": [
                "classifier        ShieldGemma 2: P(yes), P(no) = softmax of the last position's logits "
                f"of tokens {_token_index(raw, 'yes_token_index', YES_TOKEN, str(config_file))} (Yes) and "
                f"{_token_index(raw, 'no_token_index', NO_TOKEN, str(config_file))} (No); "
                "Model.classify_image(images, policies=...)",
                f"policies          {', '.join(policies)}",
                f"images            Gemma 3 SigLIP, {vision.image_size} px, patch {vision.patch_size}, "
                f"{vision.mm_tokens_per_image} tokens per image; {n_vision:,} of the parameters",
            ] + config.summary(),
        }


def _token_index(raw: dict, key: str, default: int, source: str) -> int:
    v = raw.get(key, default)
    if not isinstance(v, int) or isinstance(v, bool) or v < 0:
        raise GemmaRefError(f"{source}: {key} must be a token id, got {v!r}")
    return v


def _policy_definitions(path: Path) -> dict:
    """processor_config.json's policy_definitions, else the processor's defaults."""
    f = Path(path) / "processor_config.json"
    if not f.exists():
        return dict(DEFAULT_POLICIES)
    d = load_json(f).get("policy_definitions")
    if d is None:
        return dict(DEFAULT_POLICIES)
    if not isinstance(d, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in d.items()):
        raise GemmaRefError(f"{f}: policy_definitions must be an object {{name: definition}}")
    return d


def _template(path: Path, tokenizer):
    """The processor's chat template: chat_template.jinja / tokenizer_config.json (chat_template.load),
    else the older processor file chat_template.json {"chat_template": ...}."""
    template = chat_templates.load(path, tokenizer, "gemma3")
    f = path / "chat_template.json"
    if template.builtin and f.exists():
        t = load_json(f).get("chat_template")
        if not isinstance(t, str):
            raise GemmaRefError(f"{f}: chat_template must be a string")
        template = chat_templates.ChatTemplate({"default": t}, str(f), template.special_tokens)
    return template
