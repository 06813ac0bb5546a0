"""The ImageNet class table: 1000 synsets in standard order, checked against real file names."""

from __future__ import annotations

from pathlib import Path

import pytest

from alexnet.data.imagenet import (
    IMAGENET_CLASSES,
    IMAGENET_SYNSET_INDEX,
    readable_name,
    synset_words,
)

SAMPLES = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "imagenet-samples"


def test_table_shape_and_order():
    assert len(IMAGENET_CLASSES) == 1000
    synsets = [s for s, _ in IMAGENET_CLASSES]
    assert synsets == sorted(synsets) and len(set(synsets)) == 1000
    assert all(len(s) == 9 and s[0] == "n" and s[1:].isdigit() for s in synsets)
    assert IMAGENET_CLASSES[0] == ("n01440764", "tench")
    assert IMAGENET_CLASSES[999] == ("n15075141", "toilet tissue")
    assert IMAGENET_SYNSET_INDEX["n01484850"] == 2
    assert synset_words(0) == "tench, Tinca tinca"
    assert readable_name("n01443537") == "goldfish" and readable_name("my_class") == "my class"


@pytest.mark.skipif(not SAMPLES.is_dir(), reason="shared ImageNet samples not present")
def test_matches_the_sample_file_names():
    files = sorted(p.name for p in SAMPLES.iterdir() if p.suffix == ".JPEG")
    assert len(files) == 1000
    for i, (name, (synset, readable)) in enumerate(zip(files, IMAGENET_CLASSES, strict=True)):
        stem = name.rsplit(".", 1)[0]
        assert stem[:9] == synset, f"index {i}: {name} vs {synset}"
        assert stem[10:] == readable.replace(" ", "_"), f"index {i}: {name} vs {readable!r}"
