"""The pieces that give every rank the same forward graph (train.same_graph) and keep the frozen CLIP out of ZeRO-3
(train.deepspeed_zero), checked in one process against the model's own paths."""

import torch

from processing_dreamllm import IGNORE_INDEX
from train.data.labels import encode_documents
from train.deepspeed_zero import _replicated
from train.same_graph import append_null_row, project_images_first


def test_the_null_row_gives_the_null_condition_and_leaves_the_batch_alone(tiny_model, tiny_processor, one_thread):
    encoded = encode_documents(tiny_processor, ["a red circle on black", "two"])
    inputs = {"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"]}
    null_ids = tiny_model.model.null_condition_ids()
    with_null, labels = append_null_row(inputs, encoded["labels"], null_ids, tiny_processor.tokenizer.pad_token_id)
    assert with_null["input_ids"].shape[0] == 3 and (labels[2] == IGNORE_INDEX).all()
    with torch.no_grad():
        plain = tiny_model(**inputs)
        joint = tiny_model(**with_null)
        null = tiny_model.get_null_condition()
    rows, width = inputs["input_ids"].shape
    torch.testing.assert_close(joint.logits[:rows, :width], plain.logits, rtol=1e-5, atol=1e-5)
    assert joint.condition_embeds.shape[0] == 1  # the batch had no creation block: the null row's is the only one
    torch.testing.assert_close(joint.condition_embeds[-1:], null, rtol=1e-5, atol=1e-5)


def test_images_projected_first_equal_the_model_path_and_none_ties_a_zero(tiny_model, tiny_processor, rgb_image,
                                                                        one_thread):
    encoded = encode_documents(tiny_processor, "<image>a picture", images=[rgb_image])
    inputs = {key: encoded[key] for key in ("input_ids", "attention_mask", "pixel_values")}
    moved, tie = project_images_first(tiny_model, inputs)
    assert tie is None and "pixel_values" not in moved and "mm_encoder_outputs" in moved
    with torch.no_grad():
        torch.testing.assert_close(tiny_model(**moved).logits, tiny_model(**inputs).logits)
    text = {key: encoded[key] for key in ("input_ids", "attention_mask")}
    text["input_ids"] = torch.where(text["input_ids"] == tiny_model.config.image_patch_token_id, 1, text["input_ids"])
    projector = tiny_model.model.vision_projector
    projector.zero_grad(set_to_none=True)
    _, tie = project_images_first(tiny_model, text)
    (0.0 * tie).backward()
    assert tie.item() == 0 and all(param.grad is not None and not param.grad.any() for param in projector.parameters())
    projector.zero_grad(set_to_none=True)


def test_the_replicated_tower_computes_the_same_holds_no_parameters_and_keeps_the_keys(tiny_model, rgb_image,
                                                                                       tiny_processor, one_thread):
    tower = tiny_model.model.vision_tower
    pixels = tiny_processor(text="<image>x", images=[rgb_image])["pixel_values"]
    state = torch.random.get_rng_state()
    plain = _replicated(tower)
    assert torch.equal(torch.random.get_rng_state(), state)  # the run's random stream does not move
    assert not list(plain.parameters()) and set(plain.state_dict()) == set(tower.state_dict())
    assert type(plain).__qualname__ == type(tower).__qualname__ and plain.dtype == torch.float32
    with torch.no_grad():
        expected = tower(pixels, output_hidden_states=True).hidden_states[-2]
        got = plain(pixels, output_hidden_states=True).hidden_states[-2]
    torch.testing.assert_close(got, expected, rtol=0, atol=0)
