"""The documentation a newcomer reads: a README read to the end, guides that exist, and a spec
reference that says what the code does."""
from __future__ import annotations

import re

from conftest import REPO


def test_the_spec_reference_is_what_the_dataclasses_say():
    from harness.spec.reference import render
    page = (REPO / "docs" / "spec-reference.md").read_text()
    assert page == render(), ("docs/spec-reference.md is stale: "
                              "python -m harness.spec.reference > docs/spec-reference.md")


def test_the_reference_names_every_field_of_every_section():
    import dataclasses
    from harness.spec.schema import JobSpec
    page = (REPO / "docs" / "spec-reference.md").read_text()
    for section in dataclasses.fields(JobSpec):
        if dataclasses.is_dataclass(section.default_factory if section.default_factory
                                    is not dataclasses.MISSING else None):
            for f in dataclasses.fields(section.default_factory):
                assert f"`{section.name}.{f.name}`" in page


def test_the_readme_is_short_and_its_guides_exist():
    readme = (REPO / "README.md").read_text()
    words = len(re.findall(r"\S+", readme))
    assert words < 2000, f"README.md has {words} words; move detail into a guide in docs/"
    links = re.findall(r"\]\((docs/[^)#]+)\)", readme)
    assert len(links) >= 8
    for link in links:
        assert (REPO / link).is_file(), f"README links {link}, which does not exist"
    for guide in REPO.glob("docs/*.md"):  # links between guides resolve too
        for link in re.findall(r"\]\(([\w.-]+\.md)\)", guide.read_text()):
            assert (guide.parent / link).is_file(), f"{guide.name} links {link}"
