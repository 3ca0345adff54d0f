"""Object names from item keys (CONTRACT section 6) and extensions from mime types."""

from __future__ import annotations

import hashlib
import re

import pytest

from pipeline.core.naming import (
    IMAGE_EXTS,
    ext_for_mime,
    image_stem,
    is_plain_key,
    object_name,
    stem_for_key,
)

SAFE_NAME = re.compile(r"[A-Za-z0-9._-]+")


def _suffix(key: str) -> str:
    return "-" + hashlib.sha256(key.encode("utf-8")).hexdigest()[:12]


@pytest.mark.parametrize("key", ["sku-1", "A.b_C-9", "x", "a" * 200, "...", ".hidden", "-"])
def test_plain_keys_are_used_as_they_are(key: str) -> None:
    assert is_plain_key(key)
    assert object_name(key, "png") == f"{key}.png"


@pytest.mark.parametrize(
    ("key", "expected_prefix"),
    [
        ("a/b", "a_b"),
        ("../../etc/passwd", ".._.._etc_passwd"),
        ("..", ".."),
        (".", "."),
        ("", ""),
        ("tab\there\nnl\x00nul", "tab_here_nl_nul"),
        ("café ☕", "caf___"),
        ("日本", "__"),
        ("C:\\dir\\file", "C__dir_file"),
        ("has space", "has_space"),
    ],
)
def test_other_keys_are_sanitised_with_a_hash_suffix(key: str, expected_prefix: str) -> None:
    assert not is_plain_key(key)
    assert stem_for_key(key) == expected_prefix + _suffix(key)
    assert object_name(key, "jpg") == expected_prefix + _suffix(key) + ".jpg"


def test_sanitised_names_are_safe_single_path_segments() -> None:
    for key in ["a/b", "..", ".", "/", "\x7f", "é/../x", "a" * 500, " ", "\u202e"]:
        name = object_name(key, "png")
        assert SAFE_NAME.fullmatch(name), name
        assert "/" not in name
        assert name not in (".", "..")


def test_a_201_char_key_is_hashed_and_cut_to_100() -> None:
    key = "k" * 201
    assert object_name(key, "png") == "k" * 100 + _suffix(key) + ".png"


def test_a_500_char_unicode_key_is_cut_to_100_characters() -> None:
    key = "ü" * 250 + "z" * 250
    stem = stem_for_key(key)
    assert stem == "_" * 100 + _suffix(key)
    assert len(stem) == 113


def test_keys_that_sanitise_alike_get_different_names() -> None:
    keys = ["a/b", "a b", "a\tb", "a_b/", "a?b", "a:b", "a\\b"]
    names = {object_name(key, "png") for key in keys}
    assert len(names) == len(keys)
    assert object_name("a_b", "png") == "a_b.png"
    assert "a_b.png" not in {object_name(key, "png") for key in keys if key != "a_b"}


def test_long_keys_sharing_a_prefix_get_different_names() -> None:
    first, second = "p" * 300 + "1", "p" * 300 + "2"
    assert object_name(first, "png") != object_name(second, "png")


def test_names_are_deterministic() -> None:
    assert object_name("x/y", "png") == object_name("x/y", "png")


def test_lone_surrogates_do_not_crash() -> None:
    name = object_name("bad\udcffbyte", "png")
    assert SAFE_NAME.fullmatch(name)


@pytest.mark.parametrize(
    ("mime", "ext"),
    [
        ("image/png", "png"),
        ("image/jpeg", "jpg"),
        ("image/webp", "webp"),
        ("IMAGE/PNG", "png"),
        ("image/jpeg; charset=binary", "jpg"),
        ("image/gif", "gif"),
        ("image/svg+xml", "svg"),
        ("image/x-portable-pixmap", "portablepi"),
        ("image/../../etc", "etc"),
        ("application/octet-stream", "octetstrea"),
        ("image/", "bin"),
        ("", "bin"),
        ("garbage", "bin"),
        ("image/%%%", "bin"),
    ],
)
def test_ext_for_mime(mime: str, ext: str) -> None:
    assert ext_for_mime(mime) == ext
    assert re.fullmatch(r"[a-z0-9]{1,10}", ext_for_mime(mime))


@pytest.mark.parametrize(
    ("name", "stem"),
    [
        ("k1.png", "k1"),
        ("k1.jpg", "k1"),
        ("k1.v1.webp", "k1.v1"),
        (object_name("a b", "png"), stem_for_key("a b")),
        ("manifest.parquet", None),
        ("rejects.csv", None),
        ("notes.txt", None),
        ("png", None),
        (".png", None),
        ("sub", None),
    ],
)
def test_image_stem_inverts_object_name(name: str, stem: str | None) -> None:
    """The stem of an image name, so a listing can tell which items' names are taken."""
    assert image_stem(name) == stem


def test_every_known_image_type_has_an_image_extension() -> None:
    for mime in ("image/png", "image/jpeg", "image/webp", "image/heic", "image/avif"):
        assert ext_for_mime(mime) in IMAGE_EXTS
        assert image_stem(object_name("k", ext_for_mime(mime))) == "k"
