"""Object names -> versions (pure)."""

from __future__ import annotations

from model_poller.versions import Kind, SourceObject, parse_archive_name, parse_listing


def obj(name: str, generation: int = 1, size: int = 10) -> SourceObject:
    return SourceObject(name=name, size=size, generation=generation)


def test_archive_names() -> None:
    assert parse_archive_name("0002.zip") == (2, Kind.ZIP)
    assert parse_archive_name("2.zip") == (2, Kind.ZIP)
    assert parse_archive_name("10.tar.gz") == (10, Kind.TAR_GZ)
    assert parse_archive_name("007.tgz") == (7, Kind.TAR_GZ)
    for junk in ["model.zip", "2", "2.zip.tmp", "2.tar", "v2.zip", "2.ZIP.bak", "a.b.c", "", ".zip", "2..zip", " 2.zip"]:
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
    artifacts, skipped = parse_listing([obj("2.zip", 5), obj("0002.tar.gz", 9), obj("0002/saved_model.pb", 1), obj("0002/_READY", 3)])
    assert artifacts[2].name == "0002.tar.gz"
    assert {s.name for s in skipped} >= {"2.zip", "0002/"}


def test_version_is_integer_value() -> None:
    artifacts, _ = parse_listing([obj("0010.zip"), obj("9.tgz")])
    assert sorted(artifacts) == [9, 10]
