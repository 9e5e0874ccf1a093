"""Object names -> versions (pure)."""

from __future__ import annotations

from model_poller.versions import INT64_MAX, Kind, SourceObject, parse_archive_name, parse_listing, parse_version


def obj(name: str, generation: int = 1, size: int = 10) -> SourceObject:
    return SourceObject(name=name, size=size, generation=generation)


def test_archive_names() -> None:
    assert parse_archive_name("0002.zip") == (2, Kind.ZIP)
    assert parse_archive_name("2.zip") == (2, Kind.ZIP)
    assert parse_archive_name("10.tar.gz") == (10, Kind.TAR_GZ)
    assert parse_archive_name("007.tgz") == (7, Kind.TAR_GZ)
    for junk in [
        "model.zip",
        "2",
        "2.zip.tmp",
        "2.tar",
        "v2.zip",
        "2.ZIP.bak",
        "a.b.c",
        "",
        ".zip",
        "2..zip",
        " 2.zip",
    ]:
        assert parse_archive_name(junk) is None, junk


def test_junk_names_are_skipped_never_raised() -> None:
    names = ["README.md", "model", "a.b.c.zip", "2.zip.partial", "tmp/3.zip", "no-dot", "x/", ".hidden", "ü.zip"]
    artifacts, skipped = parse_listing([obj(n) for n in names] + [obj("5.zip")])
    assert set(artifacts) == {5}
    assert {s.name for s in skipped} >= {"README.md", "model", "a.b.c.zip", "2.zip.partial", "tmp/", "no-dot", "x/"}


def test_folder_needs_ready_marker() -> None:
    listing = [obj("3/saved_model.pb"), obj("3/variables/v.index"), obj("4/saved_model.pb"), obj("4/_READY", 7)]
    artifacts, skipped = parse_listing(listing)
    assert set(artifacts) == {4}
    four = artifacts[4]
    assert four.kind is Kind.FOLDER and four.name == "4/" and four.generation == 7
    assert [o.name for o in four.objects] == ["4/saved_model.pb"]
    assert any(s.name == "3/" and "_READY" in s.reason for s in skipped)


def test_directory_placeholders_ignored() -> None:
    artifacts, _ = parse_listing([obj("6/"), obj("6/saved_model.pb"), obj("6/variables/"), obj("6/_READY")])
    assert [o.name for o in artifacts[6].objects] == ["6/saved_model.pb"]


def test_same_version_twice_newest_generation_wins() -> None:
    artifacts, skipped = parse_listing(
        [obj("2.zip", 5), obj("0002.tar.gz", 9), obj("0002/saved_model.pb", 1), obj("0002/_READY", 3)]
    )
    assert artifacts[2].name == "0002.tar.gz"
    assert {s.name for s in skipped} >= {"2.zip", "0002/"}


def test_version_is_integer_value() -> None:
    artifacts, _ = parse_listing([obj("0010.zip"), obj("9.tgz")])
    assert sorted(artifacts) == [9, 10]


def test_parse_version_is_ascii_digits_within_int64() -> None:
    assert parse_version("0002") == 2
    assert parse_version("0") == 0
    assert parse_version(str(INT64_MAX)) == INT64_MAX
    assert parse_version("0" * 40 + "7") == 7  # leading zeros do not count against int64
    refused = [
        "²",  # str.isdigit() is true, int() raises: the notification crash
        "١٢",  # \d matches and int() accepts it as 12
        "１２",  # fullwidth digits, same
        str(INT64_MAX + 1),
        "99999999999999999999",
        "9" * 5000,  # int() refuses more than 4300 digits with a ValueError
        "",
        "1\n",
        " 1",
        "+1",
        "-1",
        "1_000",
        "0x10",
    ]
    for text in refused:
        assert parse_version(text) is None, repr(text)


def test_listing_ignores_non_ascii_and_out_of_range_names_with_a_reason() -> None:
    names = [
        "١٢.zip",
        "²/_READY",
        "²/saved_model.pb",
        "99999999999999999999.zip",
        "١٢/_READY",
        "١٢/saved_model.pb",
        "99999999999999999999/_READY",
        "99999999999999999999/saved_model.pb",
        "2.zip\n",
        "７.tgz",
    ]
    artifacts, skipped = parse_listing([obj(n) for n in names] + [obj("3.zip")])
    assert set(artifacts) == {3}
    reasons = {s.name: s.reason for s in skipped}
    assert set(reasons) == {
        "١٢.zip",
        "²/",
        "99999999999999999999.zip",
        "١٢/",
        "99999999999999999999/",
        "2.zip\n",
        "７.tgz",
    }
    assert "beyond int64" in reasons["99999999999999999999.zip"]
    assert "beyond int64" in reasons["99999999999999999999/"]
    assert "ASCII" in reasons["١٢.zip"] and "ASCII" in reasons["²/"]
    for name in ["١٢.zip", "99999999999999999999.zip", "2.zip\n", "７.tgz", "²", "9" * 5000 + ".zip"]:
        assert parse_archive_name(name) is None, name
