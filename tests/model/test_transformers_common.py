"""transformers' common model tests (`ModelTesterMixin` from the 5.24 sources) run against DreamLLM the way
transformers' tests/models/llava/test_modeling_llava.py runs them against LLaVA: a tester builds a tiny config and
inputs whose rows each hold an image block and a creation block. Generation is checked by `GenerationChecks`
(tests/model/transformers_common.py), standing in for `GenerationTesterMixin`, which the sdist does not ship."""

import unittest
from unittest import mock

import pytest
import torch
from transformers.models.auto import modeling_auto

from configuration_dreamllm import DreamLLMConfig
from modeling_dreamllm import DreamLLMForConditionalGeneration, DreamLLMModel

try:
    from transformers_common import GenerationChecks, load_test_modeling_common

    common = load_test_modeling_common()
except Exception as error:  # no network to PyPI and nothing cached, or an sdist without the file
    pytest.skip(f"transformers' test_modeling_common.py is unavailable: {error}", allow_module_level=True)

# Text ids start above the DreamLLM tokens, so resizing the vocabulary (as some common tests do) never drops them.
# Ids below 5 stay plain text: some common tests pad batches with random ids in [0, 5).
TOKEN_IDS = dict(
    image_token_id=5,
    image_patch_token_id=6,
    image_start_token_id=7,
    image_end_token_id=8,
    dream_token_id=9,
    dream_start_token_id=10,
    dream_end_token_id=11,
)
FIRST_TEXT_ID = 12


class DreamLLMModelTester:
    def __init__(self, parent, batch_size: int = 3, text_length: int = 5):
        self.parent = parent
        self.batch_size = batch_size
        self.is_training = True
        self.vocab_size = 99
        self.hidden_size = 32
        self.num_hidden_layers = 2
        self.num_attention_heads = 4
        self.num_image_tokens = (8 // 4) ** 2
        self.num_dream_queries = 2
        self.text_length = text_length
        # <s> text <im_start> N slots <im_end> text <dream_start> Q slots <dream_end> text (text last: common tests
        # overwrite the second-to-last id)
        self.seq_length = 1 + 3 * text_length + self.num_image_tokens + 2 + self.num_dream_queries + 2
        self.encoder_seq_length = self.seq_length

    def get_config(self) -> DreamLLMConfig:
        return DreamLLMConfig(
            text_config={
                "model_type": "llama",
                "vocab_size": self.vocab_size,
                "hidden_size": self.hidden_size,
                "intermediate_size": 37,
                "num_hidden_layers": self.num_hidden_layers,
                "num_attention_heads": self.num_attention_heads,
                "num_key_value_heads": 2,
                "max_position_embeddings": 512,
                "bos_token_id": 1,
                "eos_token_id": 2,
                "pad_token_id": 0,
                "tie_word_embeddings": False,
            },
            vision_config={
                "model_type": "clip_vision_model",
                "image_size": 8,
                "patch_size": 4,
                "hidden_size": 32,
                "intermediate_size": 37,
                "num_hidden_layers": 2,
                "num_attention_heads": 4,
                "projection_dim": 32,
            },
            num_dream_queries=self.num_dream_queries,
            vision_feature_layer=-2,
            condition_hidden_size=16,
            **TOKEN_IDS,
        )

    def prepare_config_and_inputs_for_common(self):
        config = self.get_config()
        text = lambda: torch.randint(FIRST_TEXT_ID, self.vocab_size, (self.batch_size, self.text_length))
        column = lambda token, n=1: torch.full((self.batch_size, n), token)
        input_ids = torch.cat(
            [
                column(1),
                text(),
                column(config.image_start_token_id),
                column(config.image_patch_token_id, self.num_image_tokens),
                column(config.image_end_token_id),
                text(),
                column(config.dream_start_token_id),
                column(config.image_patch_token_id, self.num_dream_queries),
                column(config.dream_end_token_id),
                text(),
            ],
            dim=1,
        )
        inputs = {
            "input_ids": input_ids,
            "attention_mask": torch.ones_like(input_ids),
            "pixel_values": torch.rand(self.batch_size, 3, 8, 8) * 2 - 1,
        }
        return config, inputs


class DreamLLMCommonModelTest(common.ModelTesterMixin, GenerationChecks, unittest.TestCase):
    all_model_classes = (DreamLLMModel, DreamLLMForConditionalGeneration)
    _is_composite = True

    def setUp(self):
        self.model_tester = DreamLLMModelTester(self)
        # The common tests pick labels and base-model handling from transformers' auto-class name tables; DreamLLM
        # is remote code, so enter it there for each test as its folders' `auto_map` declares it (AutoModel,
        # AutoModelForImageTextToText), and take it out again afterwards.
        for table, name in [
            (modeling_auto.MODEL_MAPPING_NAMES, "DreamLLMModel"),
            (modeling_auto.MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES, "DreamLLMForConditionalGeneration"),
        ]:
            patcher = mock.patch.dict(table, {"dreamllm": name})
            patcher.start()
            self.addCleanup(patcher.stop)

    @torch.no_grad()
    def test_eager_matches_sdpa_with_blocks_and_padding(self):
        """Stands in for the skipped `test_eager_matches_sdpa_inference_*`: the same comparison on rows that hold
        blocks and images, left-padded."""
        config, inputs = self.model_tester.prepare_config_and_inputs_for_common()
        inputs["attention_mask"][-1, :2] = 0
        for model_class in self.all_model_classes:
            torch.manual_seed(0)
            eager = model_class._from_config(config, attn_implementation="eager").eval()
            sdpa = model_class._from_config(config, attn_implementation="sdpa").eval()
            sdpa.load_state_dict(eager.state_dict())
            out_eager, out_sdpa = eager(**inputs), sdpa(**inputs)
            torch.testing.assert_close(out_sdpa[0][:, 2:], out_eager[0][:, 2:], atol=1e-5, rtol=1e-4)
            torch.testing.assert_close(out_sdpa.condition_embeds, out_eager.condition_embeds, atol=1e-5, rtol=1e-4)


# One line per skipped common test, as transformers' own model test files do.
SKIPS = {
    "test_eager_matches_sdpa_inference_": "pads the batch to 7 rows of random ids that cannot carry image blocks with "
    "images, which DreamLLM refuses; test_eager_matches_sdpa_with_blocks_and_padding runs the comparison instead",
    "test_model_rope_scaling_from_config": "feeds random ids holding <im_patch> outside any block, which DreamLLM "
    "refuses; RoPE scaling is LlamaModel's, tested by transformers' LLaMA tests",
    "test_training_gradient_checkpointing": "asserts every trainable weight gets a gradient from the LM loss alone; "
    "condition_projector learns from the diffusion loss (tests/model/test_modeling.py checks its gradients)",
}
for _name in dir(DreamLLMCommonModelTest):
    for _prefix, _reason in SKIPS.items():
        if _name.startswith(_prefix):
            setattr(DreamLLMCommonModelTest, _name, unittest.skip(_reason)(getattr(DreamLLMCommonModelTest, _name)))
