"""Training data against hostile and careless input: files named by records are read only inside the data, every
field of every format is checked, every bad record is a counted skip naming its reason, and a source that cannot
be used (all records bad, a cut-short or foreign tar, an unreadable dataset) is an error naming it."""

import io
import json
import os
import tarfile
from collections import Counter
from pathlib import Path

import pytest

from train.data import SampleBuilder, build_train_dataset
from train.data.example_files import shape_image, write_pair_folder, write_webdataset
from train.data.samples import BadSample
from train.data.sources import DataSource
from train.errors import InputError


@pytest.fixture(scope="module")
def processor(tiny_folder):
    from train.stages import load_processor

    return load_processor(tiny_folder)


def _png(color="red", shape="circle") -> bytes:
    buffer = io.BytesIO()
    shape_image(color, shape).save(buffer, format="PNG")
    return buffer.getvalue()


def _counts(samples) -> Counter:
    total = Counter()
    for sample in samples:
        total.update(sample["data_counts"])
    return total


def _all_samples(dataset, streaming):
    return list(dataset) if streaming else [dataset[index] for index in range(len(dataset))]


# ------------------------------------------------------------------------------------------ paths a record names
@pytest.fixture(scope="module")
def layout(tmp_path_factory):
    """`data/` (the source: good.png, a FIFO, a folder, a large file, links out) beside `outside/secret.png`."""
    root = tmp_path_factory.mktemp("layout")
    data, outside = root / "data", root / "outside"
    (data / "images").mkdir(parents=True)
    outside.mkdir()
    (outside / "secret.png").write_bytes(_png("blue"))
    (data / "good.png").write_bytes(_png())
    (data / "images" / "in_images.png").write_bytes(_png("green"))
    (data / "large.png").write_bytes(_png() + bytes(4096))  # over the 2,048-byte cap the tests set
    (data / "folder.png").mkdir()
    os.mkfifo(data / "pipe.png")  # opening it for reading would wait for a writer forever
    (data / "link_out.png").symlink_to(outside / "secret.png")
    (data / "link_dev.png").symlink_to("/dev/zero")  # read without limit, it would exhaust memory
    return data, outside


BAD_NAMES = {  # image name in a record -> the reason it is skipped
    "../outside/secret.png": "outside_data_folder",
    "images/../../outside/secret.png": "outside_data_folder",
    "ABSOLUTE": "outside_data_folder",
    "/etc/passwd": "outside_data_folder",
    "/dev/zero": "outside_data_folder",
    "link_out.png": "outside_data_folder",
    "link_dev.png": "outside_data_folder",
    "pipe.png": "not_a_regular_file",
    "folder.png": "not_a_regular_file",
    "large.png": "file_too_large",
    "https://example.com/cat.png": "url_not_fetched",
    "file:///etc/passwd": "url_not_fetched",
}

FORMATS = {  # a record of each JSON format naming one image
    "mmc4": lambda name: {"text_list": ["A shape.", "The end."],
                          "image_info": [{"image_name": name, "matched_text_index": 0, "matched_sim": 0.9}]},
    "llava": lambda name: {"image": name, "conversations": [{"from": "human", "value": "<image>\nWhat?"},
                                                            {"from": "gpt", "value": "A shape."}]},
    "llava_list": lambda name: {"image": ["good.png", name], "conversations": [
        {"from": "human", "value": "<image><image>\nWhat?"}, {"from": "gpt", "value": "Shapes."}]},
    "instruction": lambda name: {"instruction": "Draw a shape.", "image": name},
    "interleaved_instruction": lambda name: {"instruction": "Tell.", "text_list": ["A shape."],
                                             "image_info": [{"image_name": name, "matched_text_index": 0}]},
    "json_pair": lambda name: {"caption": "a shape", "image": name},
}


def _build(layout, item, **options):
    data, _ = layout
    builder = SampleBuilder(max_file_bytes=2048, **options)
    row = {"kind": "json", "record": json.dumps({"key": "k", "item": item, "root": str(data)}), "blobs": []}
    return builder.build(row)


@pytest.mark.parametrize("format_name", FORMATS)
@pytest.mark.parametrize("name", BAD_NAMES)
def test_a_record_naming_a_file_outside_the_rules_is_skipped_with_its_reason(layout, format_name, name):
    data, outside = layout
    named = str(outside / "secret.png") if name == "ABSOLUTE" else name
    with pytest.raises(BadSample) as bad:
        _build(layout, FORMATS[format_name](named))
    assert bad.value.reason == BAD_NAMES[name]


@pytest.mark.parametrize("format_name", FORMATS)
def test_files_inside_the_data_and_in_an_explicit_image_folder_are_read(layout, format_name):
    data, outside = layout
    for name in ("good.png", "in_images.png", str(data / "good.png")):
        spec = _build(layout, FORMATS[format_name](name))
        assert len(spec.images) + len(spec.extra_targets) >= 1
    # an image folder passed explicitly (`--image_folder`) extends the data: by name and by absolute path
    for name in ("secret.png", str(outside / "secret.png")):
        assert _build(layout, FORMATS[format_name](name), image_folders=[str(outside)])


def test_pair_folders_refuse_links_out_special_files_and_large_files(tmp_path, processor):
    data, outside = tmp_path / "pairs", tmp_path / "outside"
    write_pair_folder(data, count=2)
    outside.mkdir()
    (outside / "secret.txt").write_text("a secret caption")
    (outside / "secret.png").write_bytes(_png("blue"))
    (data / "link.png").symlink_to(outside / "secret.png")  # an image link out
    (data / "link.txt").write_text("a blue circle")
    (data / "caption_out.png").write_bytes(_png())
    (data / "caption_out.txt").symlink_to(outside / "secret.txt")  # a caption link out
    os.mkfifo(data / "pipe.png")
    (data / "pipe.txt").write_text("a pipe")
    (data / "big.png").write_bytes(_png() + bytes(2**16))
    (data / "big.txt").write_text("a big circle")
    for streaming in (False, True):
        dataset = build_train_dataset([str(data)], processor, streaming=streaming, max_file_bytes=2**15)
        samples = _all_samples(dataset, streaming)
        counts = _counts(samples)
        assert counts["skipped_outside_data_folder"] == 2
        assert counts["skipped_not_a_regular_file"] == 1 and counts["skipped_file_too_large"] == 1
        assert len(samples) == (2 if streaming else 6)  # map-style: bad rows replaced by good neighbours


def test_tar_members_over_the_size_cap_are_skipped_not_read(tmp_path, processor):
    shards = write_webdataset(tmp_path / "shards", count=4, shards=1)
    with tarfile.open(shards / "big.tar", "w") as archive:
        for name, data in (("big.png", _png() + bytes(2**16)), ("big.txt", b"a big red circle")):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    for streaming in (False, True):
        samples = _all_samples(build_train_dataset([str(shards)], processor, streaming=streaming,
                                                   max_file_bytes=2**15), streaming)
        assert _counts(samples)["skipped_file_too_large"] == 1


def test_hugging_face_rows_naming_paths_follow_the_same_rules(tmp_path, processor, layout):
    import datasets

    _, outside = layout
    table = datasets.Dataset.from_dict({
        "image": [{"bytes": _png(), "path": None}, {"bytes": None, "path": str(outside / "secret.png")},
                  {"bytes": None, "path": "/dev/zero"}],
        "caption": ["a red circle", "a secret", "zeros"],
    })
    table.to_parquet(str(tmp_path / "rows" / "train.parquet"))
    for streaming in (False, True):
        samples = _all_samples(build_train_dataset([str(tmp_path / "rows")], processor, streaming=streaming),
                               streaming)
        assert _counts(samples)["skipped_outside_data_folder"] == 2


# ------------------------------------------------------------------------------------------ every field checked
GOOD = {
    "mmc4": {"text_list": ["A red circle.", "End."], "image_info": [
        {"image_name": "good.png", "matched_text_index": 0, "matched_sim": 0.9}]},
    "llava": {"image": "good.png", "conversations": [{"from": "human", "value": "<image>\nWhat?"},
                                                     {"from": "gpt", "value": "A circle."}]},
    "instruction": {"instruction": "Draw a red circle.", "image": "good.png"},
    "json_pair": {"caption": "a red circle", "image": "good.png"},
}


def _edit(format_name, path, value):
    """GOOD[format_name] with the field at `path` (keys / indices) set to `value` (or removed: `...`)."""
    item = json.loads(json.dumps(GOOD[format_name]))
    target = item
    for key in path[:-1]:
        target = target[key]
    if value is ...:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return item


BAD_FIELDS = [
    ("mmc4", ("image_info", 0, "matched_sim"), "high", "invalid_field"),
    ("mmc4", ("image_info", 0, "matched_sim"), True, "invalid_field"),
    ("mmc4", ("image_info", 0, "matched_sim"), float("nan"), "invalid_field"),
    ("mmc4", ("image_info", 0, "matched_sim"), [0.5], "invalid_field"),
    ("mmc4", ("image_info", 0, "matched_text_index"), "0", "invalid_field"),
    ("mmc4", ("image_info", 0, "matched_text_index"), 0.5, "invalid_field"),
    ("mmc4", ("image_info", 0, "matched_text_index"), True, "invalid_field"),
    ("mmc4", ("image_info", 0, "matched_text_index"), -1, "invalid_field"),
    ("mmc4", ("image_info", 0, "matched_text_index"), 7, "invalid_field"),
    ("mmc4", ("image_info", 0, "matched_text_index"), ..., "missing_field"),
    ("mmc4", ("image_info", 0, "image_name"), 5, "invalid_field"),
    ("mmc4", ("image_info", 0, "image_name"), "", "missing_field"),
    ("mmc4", ("image_info", 0, "image_name"), ..., "missing_field"),
    ("mmc4", ("image_info", 0), "good.png", "invalid_field"),
    ("mmc4", ("image_info",), {"image_name": "good.png"}, "invalid_field"),
    ("mmc4", ("text_list",), "A red circle.", "invalid_field"),
    ("mmc4", ("text_list",), [1, 2], "invalid_field"),
    ("mmc4", ("text_list",), [], "invalid_field"),  # its image matches no sentence
    ("mmc4", ("instruction",), 5, "invalid_field"),
    ("llava", ("conversations",), "hello", "invalid_field"),
    ("llava", ("conversations",), [], "missing_field"),
    ("llava", ("conversations", 0), "hello", "invalid_field"),
    ("llava", ("conversations", 1, "from"), "tool", "invalid_field"),
    ("llava", ("conversations", 1, "from"), ..., "invalid_field"),
    ("llava", ("conversations", 1, "value"), 5, "invalid_field"),
    ("llava", ("conversations", 1, "value"), ..., "invalid_field"),
    ("llava", ("conversations", 1, "from"), "system", "invalid_field"),  # a system turn mid-conversation
    ("llava", ("conversations", 1, "from"), "human", "missing_field"),  # no assistant reply to learn
    ("llava", ("conversations", 0, "value"), "<image><image>\nWhat?", "invalid_field"),  # 2 placeholders, 1 image
    ("llava", ("image",), 5, "invalid_field"),
    ("llava", ("image",), [5], "invalid_field"),
    ("llava", ("image",), {"path": "good.png"}, "invalid_field"),
    ("instruction", ("instruction",), 5, "invalid_field"),
    ("instruction", ("instruction",), "  ", "missing_field"),
    ("instruction", ("instruction",), {"text": "Draw"}, "invalid_field"),
    ("instruction", ("image",), 5, "invalid_field"),
    ("instruction", ("image",), ..., "missing_field"),
    ("json_pair", ("caption",), 5, "invalid_field"),
    ("json_pair", ("caption",), "", "missing_field"),
    ("json_pair", ("image",), None, "missing_field"),
    ("json_pair", ("image",), "missing.png", "unreadable_image"),
    ("json_pair", ("image",), "not_an_image.png", "unreadable_image"),
]


@pytest.fixture(scope="module")
def field_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("fields")
    (root / "good.png").write_bytes(_png())
    (root / "not_an_image.png").write_bytes(b"\x89PNG\r\n\x1a\n and then nothing")
    return root


@pytest.mark.parametrize("format_name, path, value, reason", BAD_FIELDS,
                         ids=[f"{f}-{'.'.join(map(str, p))}-{v!r}" for f, p, v, _ in BAD_FIELDS])
def test_every_field_of_every_format_is_checked(field_root, format_name, path, value, reason):
    builder = SampleBuilder()
    good = {"kind": "json", "record": json.dumps({"key": "k", "item": GOOD[format_name], "root": str(field_root)})}
    builder.build(good)  # the unedited record is fine
    row = {"kind": "json", "record": json.dumps({"key": "k", "item": _edit(format_name, path, value),
                                                 "root": str(field_root)})}
    with pytest.raises(BadSample) as bad:
        builder.build(row)
    assert bad.value.reason == reason, str(bad.value)


@pytest.mark.parametrize("line, reason", [
    ('{"text_list": ["cut', "broken_json"),
    ("[" * 100000 + "]" * 100000, "broken_json"),  # nesting deeper than the parser's recursion
    ('{"caption": "a", "image": "good.png", "n": ' + "1" * 5000 + "}", "broken_json"),  # an int too long to read
    ("[1, 2]", "invalid_field"),
    ('"just a string"', "invalid_field"),
    ('{"unknown": "format"}', "missing_field"),
])
def test_lines_that_are_not_records_are_skipped(field_root, line, reason):
    row = {"kind": "json", "record": json.dumps({"key": "k", "line": line, "root": str(field_root)})}
    with pytest.raises(BadSample) as bad:
        SampleBuilder().build(row)
    assert bad.value.reason == reason


def test_bad_records_never_stop_training_and_are_all_counted(field_root, processor):
    """Every bad record above in one file, between good ones: map-style and streamed reads count each once,
    including the bad records after the last good one."""
    good = [json.dumps(GOOD[name]) for name in GOOD]
    bad = [json.dumps(_edit(f, p, v)) for f, p, v, _ in BAD_FIELDS] + ['{"cut', "[1]"]
    lines = [good[0], *bad[: len(bad) // 2], *good[1:], *bad[len(bad) // 2 :]]  # bad records last too
    (field_root / "mixed.jsonl").write_text("\n".join(lines) + "\n")
    for streaming in (False, True):
        dataset = build_train_dataset([str(field_root / "mixed.jsonl")], processor, streaming=streaming,
                                      shuffle_buffer=0)
        samples = _all_samples(dataset, streaming)
        counts = _counts(samples)
        skipped = sum(value for key, value in counts.items() if key.startswith("skipped_"))
        assert skipped == len(bad), (streaming, counts)
        assert len(samples) == (len(good) if streaming else len(lines))


# ------------------------------------------------------------------------------------- sources that cannot be used
def _all_bad_sources(root: Path) -> dict[str, Path]:
    (root / "bad.jsonl").write_text('{"cut\n[1]\n{"caption": 5, "image": "x.png"}\n')
    (root / "bad.json").write_text(json.dumps([{"conversations": "x"}, {"caption": "a"}]))
    pairs = root / "pairs"
    pairs.mkdir()
    for index in range(3):
        (pairs / f"{index}.png").write_bytes(b"not a png")
        (pairs / f"{index}.txt").write_text("a caption")
    with tarfile.open(root / "bad.tar", "w") as archive:
        for name in ("0.png", "1.png"):  # images without captions
            info = tarfile.TarInfo(name)
            info.size = len(_png())
            archive.addfile(info, io.BytesIO(_png()))
    return {"jsonl": root / "bad.jsonl", "json": root / "bad.json", "pairs": pairs, "tar": root / "bad.tar"}


@pytest.mark.parametrize("streaming", [False, True])
def test_a_source_where_every_record_is_bad_is_an_error_naming_it(tmp_path, processor, streaming):
    good = write_pair_folder(tmp_path / "good", count=2)
    for kind, path in _all_bad_sources(tmp_path).items():
        with pytest.raises(InputError, match=rf"--data {path}: none of its first \d+ records could be used"):
            build_train_dataset([str(good), str(path)], processor, streaming=streaming)


def _tar_bytes(count=3) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        for index in range(count):
            for name, data in ((f"{index}.png", _png()), (f"{index}.txt", b"a red circle")):
                info = tarfile.TarInfo(name)
                info.size = len(data)
                archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def _member_boundary(data: bytes) -> int:
    """The offset where the last member's header starts: a cut there leaves whole members only."""
    with tarfile.open(fileobj=io.BytesIO(data)) as archive:
        return archive.getmembers()[-1].offset


@pytest.mark.parametrize("damage", ["cut_mid_member", "cut_at_member_boundary", "cut_in_end_blocks", "not_a_tar",
                                    "empty", "gzip_cut"])
def test_truncated_or_foreign_tar_shards_are_errors_naming_them(tmp_path, damage):
    import gzip

    data = _tar_bytes()
    damaged = {
        "cut_mid_member": data[: len(data) // 2 + 100],
        "cut_at_member_boundary": data[: _member_boundary(data)],
        "cut_in_end_blocks": data[: _member_boundary(data) + 1024 + 512],  # one of the two end blocks
        "not_a_tar": b"these are not the bytes of a tar archive\n" * 40,
        "empty": b"",
        "gzip_cut": gzip.compress(data)[:-200],
    }[damage]
    shards = tmp_path / "shards"
    shards.mkdir()
    (shards / "good.tar").write_bytes(data)
    (shards / "damaged.tar").write_bytes(damaged)
    with pytest.raises(InputError, match=rf"--data {shards / 'damaged.tar'}: .*(truncated|not a readable tar)"):
        source = DataSource.parse(str(shards))
        for streaming in (False, True):
            list(source.iter_records(streaming=streaming))


def test_unreadable_dataset_files_are_errors_naming_them(tmp_path, processor):
    (tmp_path / "rows").mkdir()
    (tmp_path / "rows" / "train.parquet").write_bytes(b"PAR1 this is no parquet file")
    (tmp_path / "broken.json").write_text('[{"caption": "a", "image": "x.png"},')
    (tmp_path / "notes.txt").write_text("hello")
    cases = {"rows": "cannot be read as a dataset", "broken.json": "not valid JSON", "notes.txt": "unsupported",
             "missing": "no such file or folder", "rows/*.json": "no file matches", "rows:0": "weight must be"}
    for name, message in cases.items():
        with pytest.raises(InputError, match=message):
            build_train_dataset([str(tmp_path / name)], processor)
    with pytest.raises(InputError, match="--image_folder .*: no such folder"):
        build_train_dataset([str(tmp_path / "rows")], processor, image_folders=[str(tmp_path / "nope")])


def test_streamed_counts_survive_data_loader_workers_and_process_shards(tmp_path, processor):
    from torch.utils.data import DataLoader

    from train.data.encoding import CountedStream

    folder = tmp_path / "shards"
    folder.mkdir()
    (folder / "good.png").write_bytes(_png())
    for shard in range(2):  # each shard: one good record, then two bad ones
        lines = [{"caption": "a red circle", "image": "good.png"}, {"caption": 5, "image": "good.png"}, [1]]
        (folder / f"part-{shard}.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    dataset = build_train_dataset([str(folder)], processor, streaming=True, shuffle_buffer=0)
    parts = [dataset.shard(num_shards=2, index=index) for index in range(2)]  # as accelerate splits processes
    assert all(isinstance(part, CountedStream) for part in parts)
    assert [sum(_counts(part).values()) for part in parts] == [2, 2]
    loader = DataLoader(dataset, batch_size=None, num_workers=2, collate_fn=lambda sample: sample)
    samples = list(loader)
    assert len(samples) == 2 and _counts(samples) == {"skipped_invalid_field": 4}


def _png_header(width: int, height: int) -> bytes:
    """A PNG that declares `width` x `height` pixels and holds none (Pillow reads the size without decoding)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


def test_decompression_bombs_are_skipped_before_decoding(tmp_path):
    from PIL import Image

    from train.data.samples import open_image

    with pytest.raises(BadSample) as bad:
        open_image(_png_header(Image.MAX_IMAGE_PIXELS // 1000 + 1, 1001))  # a few bytes, ~89 M pixels declared
    assert bad.value.reason == "file_too_large"
    with pytest.raises(BadSample) as bad:
        open_image(_png_header(40, 40))  # a valid size, but no pixel data
    assert bad.value.reason == "unreadable_image"
