"""Training data: kind detection, the sample formats, bad records skipped and counted, streaming, collation."""

import json
import shutil
from collections import Counter

import pytest
import torch
from PIL import Image

from train.data import DreamLLMDataCollator, SampleBuilder, build_train_dataset, detect_kind
from train.data.example_files import write_example_sources
from train.errors import InputError

IGNORE_INDEX = -100


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    return write_example_sources(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def processor(tiny_folder):
    from train.stages import load_processor

    return load_processor(tiny_folder)


def _counts(samples) -> Counter:
    total = Counter()
    for sample in samples:
        total.update(sample["data_counts"])
    return total


def test_kind_is_detected_from_contents(sources):
    assert detect_kind(str(sources["pairs"]))[0] == "pairs"
    shards = sorted(str(p) for p in sources["webdataset"].glob("*.tar"))
    assert detect_kind(str(sources["webdataset"])) == ("webdataset", shards)
    assert detect_kind(str(sources["mmc4"]))[0] == "json"
    assert detect_kind(str(sources["llava"]))[0] == "json"
    assert detect_kind(str(sources["webdataset"] / "*.tar"))[0] == "webdataset"


def test_pairs_are_split_between_understanding_and_creation(sources, processor):
    builder = SampleBuilder(creation_prob=0.5, seed=0)
    kinds = Counter(builder._is_creation(f"key{i}") for i in range(400))
    assert 150 < kinds[True] < 250  # about half, decided by a hash (the same in every worker and resumed run)
    always_create = build_train_dataset([str(sources["webdataset"])], processor, creation_prob=1.0)
    never_create = build_train_dataset([str(sources["webdataset"])], processor, creation_prob=0.0)
    for index in range(len(always_create)):
        created, understood = always_create[index], never_create[index]
        # creation: caption <dream_start> queries <dream_end> </s>, the image is the target, no CLIP read-back
        assert created["pixel_values"] is None and created["target_pixel_values"].shape[0] == 1
        assert int((created["input_ids"] == processor.dream_start_token_id).sum()) == 1
        assert processor.dream_start_token_id in created["labels"].tolist()
        # understanding: <im_start> ... <im_end> caption </s>, the caption is learned
        assert understood["target_pixel_values"] is None and understood["pixel_values"].shape[0] == 1
        assert understood["input_ids"][1] == processor.image_start_token_id
        assert (understood["labels"] != IGNORE_INDEX).sum() > 1


def test_mmc4_similarity_filter_and_image_placement(sources, processor):
    dataset = build_train_dataset([str(sources["mmc4"])], processor)
    sample = dataset[0]
    # 3 images per document, the third below matched_sim 0.25: 2 creation blocks, each followed by its CLIP block
    assert sample["target_pixel_values"].shape[0] == 2 and sample["pixel_values"].shape[0] == 2
    assert sample["data_counts"] == {"filtered_low_similarity_images": 1}
    text = processor.decode(sample["input_ids"])
    assert text.index("Here is a red circle.") < text.index("<dream_start>") < text.index("Here is a green circle.")
    assert processor.dream_start_token_id in sample["labels"].tolist()  # the LM learns where images go
    unfiltered = build_train_dataset([str(sources["mmc4"])], processor, min_similarity=0.0)
    assert unfiltered[0]["target_pixel_values"].shape[0] == 3


def test_llava_conversations_learn_assistant_replies_only(sources, processor):
    sample = build_train_dataset([str(sources["llava"])], processor)[0]
    learned = [token for token in sample["labels"].tolist() if token != IGNORE_INDEX]
    assert processor.decode(learned).strip() == "It is a red circle.</s>"
    assert sample["pixel_values"].shape[0] == 1 and sample["target_pixel_values"] is None


def test_instructions(sources, processor):
    samples = [build_train_dataset([str(sources["instructions"])], processor)[i] for i in range(3)]
    draw, story = samples[0], samples[2]
    learned = [token for token in draw["labels"].tolist() if token != IGNORE_INDEX]
    assert learned[-2:] == [processor.dream_start_token_id, processor.eos_token_id]  # answer: an image, then </s>
    assert processor.decode(learned[:-2]).strip() == ""
    # The reply is laid out as generation writes it: the creation block, the created image read back, then </s>.
    ids = draw["input_ids"].tolist()
    start = ids.index(processor.dream_start_token_id)
    assert ids[start:] == processor.dream_block() + processor.image_block() + [processor.eos_token_id]
    assert draw["labels"][-1] == processor.eos_token_id
    assert draw["target_pixel_values"].shape[0] == 1 and draw["pixel_values"].shape[0] == 1
    image = Image.open(sources["instructions"].parent / "images" / "t2i_0.png").convert("RGB")
    read_back = processor.image_processor(image, return_tensors="pt")["pixel_values"][0]
    assert torch.allclose(draw["pixel_values"][0], read_back)
    assert story["target_pixel_values"].shape[0] == 2 and story["pixel_values"].shape[0] == 2


@pytest.fixture(scope="module")
def broken_sources(tmp_path_factory, sources):
    root = tmp_path_factory.mktemp("broken")
    pairs = root / "pairs"
    pairs.mkdir()
    for path in sorted(sources["pairs"].iterdir()):
        (pairs / path.name).write_bytes(path.read_bytes())
    (pairs / "00000.png").write_bytes(b"\x89PNG\r\n\x1a\n not a png at all")  # unreadable image
    (pairs / "00001.txt").unlink()  # a pair without its caption
    mmc4 = root / "mmc4"
    mmc4.mkdir()
    shutil.copytree(sources["mmc4"].parent / "images", mmc4 / "images")
    lines = sources["mmc4"].read_text().splitlines()
    broken_doc = json.loads(lines[1])
    broken_doc["image_info"][0]["image_name"] = "missing.png"  # an interleaved doc keeps its text, drops the image
    records = [lines[0], '{"text_list": ["cut here', "[1, 2]", json.dumps(broken_doc)]  # broken JSON, not an object
    (mmc4 / "docs.jsonl").write_text("\n".join(records) + "\n")
    return {"pairs": pairs, "mmc4": mmc4 / "docs.jsonl"}


def test_bad_records_are_skipped_and_counted(broken_sources, processor):
    pairs = build_train_dataset([str(broken_sources["pairs"])], processor)
    samples = [pairs[i] for i in range(len(pairs))]
    counts = _counts(samples)
    assert counts["skipped_unreadable_image"] == 1 and counts["skipped_missing_field"] == 1
    assert all(sample["input_ids"].numel() for sample in samples)  # bad rows were replaced by good neighbours

    mmc4 = build_train_dataset([str(broken_sources["mmc4"])], processor)
    counts = _counts(mmc4[i] for i in range(len(mmc4)))
    assert counts["skipped_broken_json"] >= 1 and counts["skipped_invalid_field"] >= 1  # "[1, 2]": not an object
    assert counts["dropped_unreadable_images"] >= 1

    streamed = list(build_train_dataset([str(broken_sources["mmc4"])], processor, streaming=True, shuffle_buffer=0))
    counts = _counts(streamed)
    assert len(streamed) == 2
    assert counts["skipped_broken_json"] == 1 and counts["skipped_invalid_field"] == 1
    assert counts["dropped_unreadable_images"] == 1


def test_too_long_samples_are_skipped_but_documents_truncated(sources, processor):
    with pytest.raises(InputError, match=r"llava.*none of its first 3 records could be used \({'too_long': 3}"):
        # every conversation is longer than 40 tokens: nothing to train on is an error naming the source, not a hang
        build_train_dataset([str(sources["llava"])], processor, max_length=40)
    documents = build_train_dataset([str(sources["mmc4"])], processor, max_length=60)
    sample = documents[0]
    assert len(sample["input_ids"]) <= 60
    assert int((sample["input_ids"] == processor.dream_start_token_id).sum()) == (
        0 if sample["target_pixel_values"] is None else sample["target_pixel_values"].shape[0]
    )


def test_streaming_reads_every_kind(sources, processor):
    for name in ("pairs", "webdataset", "mmc4", "llava", "instructions"):
        streamed = list(build_train_dataset([str(sources[name])], processor, streaming=True))
        indexed = build_train_dataset([str(sources[name])], processor)
        assert len(streamed) == len(indexed) > 0, name


def test_mixing_and_collation(sources, processor):
    dataset = build_train_dataset([f"{sources['pairs']}:2", str(sources["mmc4"])], processor, seed=1)
    assert len(dataset) >= 4 + 3  # every record of every source at least once
    samples = [dataset[i] for i in range(4)]
    batch = DreamLLMDataCollator(pad_token_id=processor.pad_token_id)(samples)
    width = max(len(s["input_ids"]) for s in samples)
    assert batch["input_ids"].shape == batch["labels"].shape == batch["attention_mask"].shape == (4, width)
    for row, sample in enumerate(samples):
        length = len(sample["input_ids"])
        assert torch.equal(batch["input_ids"][row, :length], sample["input_ids"])
        assert bool((batch["labels"][row, length:] == IGNORE_INDEX).all())
        assert int(batch["attention_mask"][row].sum()) == length
    targets = [s["target_pixel_values"] for s in samples if s["target_pixel_values"] is not None]
    if targets:
        assert torch.equal(batch["target_pixel_values"], torch.cat(targets))  # document order = condition order
    assert batch["data_counts"] == dict(_counts(samples))


def test_length_buckets_split_sorted_rows_with_their_images(sources, processor):
    stories = build_train_dataset([str(sources["mmc4"])], processor)
    pairs = build_train_dataset([str(sources["pairs"])], processor, creation_prob=1.0)
    samples = [pairs[0], stories[0], pairs[1], stories[1]]
    batch = DreamLLMDataCollator(pad_token_id=processor.pad_token_id, length_bucket_ratio=0.5)(samples)
    ordered = sorted(samples, key=lambda sample: len(sample["input_ids"]), reverse=True)
    buckets = batch["length_buckets"]
    assert [bucket.row_end - bucket.row_start for bucket in buckets] == [2, 2]  # two stories, then two pairs
    assert buckets[0].row_start == 0 and buckets[-1].row_end == 4
    assert buckets[1].pixel_start == buckets[0].pixel_end
    for bucket in buckets:
        group = ordered[bucket.row_start : bucket.row_end]
        assert bucket.width == len(group[0]["input_ids"]) == int(batch["attention_mask"][bucket.row_start].sum())
        parts = [sample["pixel_values"] for sample in group if sample["pixel_values"] is not None]
        if parts:
            assert torch.equal(batch["pixel_values"][bucket.pixel_start : bucket.pixel_end], torch.cat(parts))
        else:
            assert bucket.pixel_start == bucket.pixel_end
    # The targets stay in row order, the order in which the buckets' condition blocks are concatenated.
    targets = [sample["target_pixel_values"] for sample in ordered if sample["target_pixel_values"] is not None]
    assert torch.equal(batch["target_pixel_values"], torch.cat(targets))
    # Lengths within the ratio stay one bucket, and then the batch carries none.
    same = DreamLLMDataCollator(pad_token_id=processor.pad_token_id, length_bucket_ratio=0.5)(samples[1::2])
    assert "length_buckets" not in same and same["input_ids"].shape[0] == 2


def test_hugging_face_datasets(tmp_path, processor):
    import datasets

    from train.data.example_files import shape_image

    table = datasets.Dataset.from_dict(
        {
            "image": [shape_image("red", "circle"), shape_image("blue", "square")],
            "caption": ["a red circle", "a blue square"],
        }
    ).cast_column("image", datasets.Image())
    table.save_to_disk(str(tmp_path / "saved"))
    table.to_parquet(str(tmp_path / "parquet" / "train.parquet"))
    for path in (tmp_path / "saved", tmp_path / "parquet"):
        assert detect_kind(str(path))[0] == "hf"
        for streaming in (False, True):
            dataset = build_train_dataset([str(path)], processor, streaming=streaming)
            samples = list(dataset) if streaming else [dataset[i] for i in range(len(dataset))]
            assert len(samples) == 2
            for sample in samples:  # each pair: one CLIP image (understanding) or one target (creation)
                images = 0 if sample["pixel_values"] is None else len(sample["pixel_values"])
                targets = 0 if sample["target_pixel_values"] is None else len(sample["target_pixel_values"])
                assert images + targets == 1
