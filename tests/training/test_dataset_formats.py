"""The recipes' datasets as their preparation tools write them (tests/training/dataset_formats.py), read by the training data
layer, and the official label options (`pair_labels`, `reply_dream_labels`, interleaved blocks per alignment run)."""

import json
import tarfile

import pytest
import torch

from dataset_formats import (
    write_img2dataset_shards,
    write_instruct_mmc4,
    write_llava_instruct,
    write_llava_pretrain,
    write_mmc4_core,
)
from train.data import build_train_dataset
from train.data.example_files import shape_image
from train.data.samples import BadSample, SampleBuilder
from train.data.sources import detect_kind

IGNORE = -100


def samples(dataset) -> list[dict]:
    return [dataset[index] for index in range(len(dataset))]


def learned_text(processor, sample) -> str:
    labels = torch.as_tensor(sample["labels"])
    return processor.tokenizer.decode(labels[labels != IGNORE], skip_special_tokens=False)


def count(sample, key) -> int:
    return 0 if sample[key] is None else len(sample[key])


def test_img2dataset_shards_are_read_as_written(tmp_path, tiny_processor):
    folder = write_img2dataset_shards(tmp_path / "laion", count=6, per_shard=4, failed=(1,))
    # the layout img2dataset leaves: shards, their parquet and stats files; only downloaded samples in the tars
    assert sorted(p.name for p in folder.iterdir()) == [
        "00000.parquet", "00000.tar", "00000_stats.json", "00001.parquet", "00001.tar", "00001_stats.json"]
    with tarfile.open(folder / "00000.tar") as archive:
        names = archive.getnames()
        meta = json.loads(archive.extractfile("000000.json").read())
    assert names[:3] == ["000000.jpg", "000000.json", "000000.txt"] and "000001.jpg" not in names
    assert {"url", "caption", "key", "status", "error_message", "width", "height", "sha256"} <= set(meta)
    assert detect_kind(str(folder)) == ("webdataset", [str(folder / "00000.tar"), str(folder / "00001.tar")])

    read = samples(build_train_dataset([str(folder)], tiny_processor, creation_prob=0.0))
    assert len(read) == 5  # six urls, one failed download
    assert all(count(sample, "pixel_values") == 1 and count(sample, "target_pixel_values") == 0 for sample in read)
    captions = sorted(learned_text(tiny_processor, sample).replace("</s>", "").strip() for sample in read)
    assert captions[0] == "a blue circle" and "a green circle" not in captions  # index 1 failed

    # captions from the .json's "caption" when there is no .txt member (img2dataset without --save_caption ...)
    no_txt = write_img2dataset_shards(tmp_path / "json-only", count=2, per_shard=4, failed=(), caption_file=False)
    read = samples(build_train_dataset([str(no_txt)], tiny_processor, creation_prob=0.0))
    assert sorted(learned_text(tiny_processor, s).replace("</s>", "").strip() for s in read) == [
        "a green circle", "a red circle"]


def test_creation_pairs_learn_their_caption_or_nothing(tmp_path, tiny_processor):
    folder = write_img2dataset_shards(tmp_path / "laion", count=2, per_shard=4, failed=())
    project = samples(build_train_dataset([str(folder)], tiny_processor, creation_prob=1.0))
    official = samples(build_train_dataset([str(folder)], tiny_processor, creation_prob=1.0, pair_labels="none"))
    for mine, theirs in zip(project, official, strict=True):
        assert torch.equal(torch.as_tensor(mine["input_ids"]), torch.as_tensor(theirs["input_ids"]))
        assert count(mine, "target_pixel_values") == count(theirs, "target_pixel_values") == 1
        assert count(theirs, "pixel_values") == 0  # creation pairs read nothing back
        assert (torch.as_tensor(theirs["labels"]) == IGNORE).all()  # official: every label is -100
        text = learned_text(tiny_processor, mine)
        assert text.startswith("a ") and "<dream_start>" in text and text.endswith("</s>")
    with pytest.raises(ValueError, match="pair_labels must be one of"):
        SampleBuilder(pair_labels="captions")


def test_pair_min_size_skips_small_pairs(rgb_image):
    # the official SFT pair filter (min_size=128): both sides must be larger; rgb_image is 48x40
    spec = SampleBuilder(pair_min_size=39).pair("key", "a picture", rgb_image)
    assert [image.size for image in spec.images + spec.extra_targets] == [(48, 40)]
    with pytest.raises(BadSample, match="small_image: 48x40 pixels, at most 40 on a side"):
        SampleBuilder(pair_min_size=40).pair("key", "a picture", rgb_image)


def test_mmc4_core_shard_with_the_similarity_filter_and_alignment_blocks(tmp_path, tiny_processor):
    path = write_mmc4_core(tmp_path / "mmc4-core", count=2)
    line = json.loads(path.read_text().splitlines()[0])
    assert {"url", "text_list", "image_info", "similarity_matrix", "could_have_url_duplicate"} <= set(line)
    assert set(line["image_info"][0]) == {"image_name", "raw_url", "matched_text_index", "matched_sim"}
    folder = str(path.parent)
    dream_start = tiny_processor.dream_start_token_id

    def read(**options):
        return samples(build_train_dataset([folder], tiny_processor, **options))

    filtered, unfiltered = read(min_similarity=0.25), read(min_similarity=None)
    images = [len(json.loads(text)["image_info"]) for text in path.read_text().splitlines()]  # 3 and 3
    assert [count(s, "target_pixel_values") for s in unfiltered] == images
    assert [count(s, "target_pixel_values") for s in filtered] == [n - 1 for n in images]  # sim 0.21 dropped
    assert sum(s["data_counts"].get("filtered_low_similarity_images", 0) for s in filtered) == 2
    for sample in unfiltered:  # joint: each image is a creation block read back through CLIP; <dream_start> learned
        ids, labels = torch.as_tensor(sample["input_ids"]), torch.as_tensor(sample["labels"])
        assert count(sample, "pixel_values") == count(sample, "target_pixel_values")
        assert (labels[ids == dream_start] == dream_start).all()

    creation = read(min_similarity=None, interleaved_blocks="creation")
    comprehension = read(min_similarity=None, interleaved_blocks="comprehension")
    for joint, made, understood in zip(unfiltered, creation, comprehension, strict=True):
        n = count(joint, "target_pixel_values")
        assert (count(made, "target_pixel_values"), count(made, "pixel_values")) == (n, 0)
        assert int((torch.as_tensor(made["input_ids"]) == dream_start).sum()) == n
        assert (count(understood, "target_pixel_values"), count(understood, "pixel_values")) == (0, n)
        assert not (torch.as_tensor(understood["input_ids"]) == dream_start).any()
        block = tiny_processor.num_image_tokens + 2
        assert len(joint["input_ids"]) == len(made["input_ids"]) + n * block  # the read-back blocks are gone


def test_creation_only_documents_truncate_with_their_targets(tmp_path, tiny_processor):
    path = write_mmc4_core(tmp_path / "mmc4-core", count=1)
    full = samples(build_train_dataset([str(path)], tiny_processor, min_similarity=None,
                                       interleaved_blocks="creation"))[0]
    limit = len(full["input_ids"]) - 20  # cuts the last creation block, which has text after it
    cut = samples(build_train_dataset([str(path)], tiny_processor, min_similarity=None,
                                      interleaved_blocks="creation", max_length=limit))[0]
    blocks = int((torch.as_tensor(cut["input_ids"]) == tiny_processor.dream_start_token_id).sum())
    assert len(cut["input_ids"]) <= limit
    assert blocks == count(cut, "target_pixel_values") < count(full, "target_pixel_values")


def test_llava_instruct_and_pretrain_json_with_their_image_folders(tmp_path, tiny_processor):
    mix = write_llava_instruct(tmp_path / "llava-v1.5", count=2)
    pretrain = write_llava_pretrain(tmp_path / "llava-pretrain", count=2)
    read = samples(build_train_dataset([str(mix)], tiny_processor))
    assert [count(s, "pixel_values") for s in read] == [1, 1, 0]  # two COCO images, one text-only conversation
    text = learned_text(tiny_processor, read[0])
    assert "The image shows a red circle." in text and "the background is black." in text
    assert "What is shown" not in text and "USER" not in text  # only the assistant replies are learned
    assert learned_text(tiny_processor, read[2]).strip() == "A circle has no corners.</s>"
    read = samples(build_train_dataset([str(pretrain)], tiny_processor))
    assert [count(s, "pixel_values") for s in read] == [1, 1]  # images/00000/... resolved under images/
    assert learned_text(tiny_processor, read[1]).strip() == "a green circle</s>"


def test_reply_dream_labels_and_instruct_mmc4(tmp_path, tiny_processor):
    dream_start = tiny_processor.dream_start_token_id
    (tmp_path / "t2i").mkdir()
    shape_image("red", "circle").save(tmp_path / "t2i" / "0.jpg")
    # a text-to-image instruction: its reply is a <dream> whose target is the image
    t2i = tmp_path / "t2i" / "draw.jsonl"
    t2i.write_text(json.dumps({"instruction": "Draw a red circle.", "image": "0.jpg"}) + "\n")
    project = samples(build_train_dataset([str(t2i)], tiny_processor))[0]
    official = samples(build_train_dataset([str(t2i)], tiny_processor, reply_dream_labels="none"))[0]
    ids = torch.as_tensor(project["input_ids"])
    assert (torch.as_tensor(project["labels"])[ids == dream_start] == dream_start).all()
    assert (torch.as_tensor(official["labels"])[ids == dream_start] == IGNORE).all()
    assert learned_text(tiny_processor, official).strip() == "</s>"
    # instruction + interleaved answer keeps learning <dream_start> under the official option (as officially)
    instruct = write_instruct_mmc4(tmp_path / "instruct-mmc4", count=1)
    sample = samples(build_train_dataset([str(instruct)], tiny_processor, reply_dream_labels="none"))[0]
    ids, labels = torch.as_tensor(sample["input_ids"]), torch.as_tensor(sample["labels"])
    assert int((ids == dream_start).sum()) == count(sample, "target_pixel_values") == 2
    assert (labels[ids == dream_start] == dream_start).all()
    assert "Write a short" not in learned_text(tiny_processor, sample)
