"""Contributors registry: id -> checksummed EVM address; missing addresses named, never defaulted."""

from __future__ import annotations

import pytest
from eth_account import Account

from labeling import ContributorsError, ContributorsRegistry, MissingAddressError

A = Account.create("a").address
B = Account.create("b").address


def test_csv_and_yaml_give_the_same_checksummed_registry(tmp_path):
    (tmp_path / "c.csv").write_text(f"contributor,address\nann@x.org,{A.lower()}\nclinic-north,{B}\n")
    (tmp_path / "c.yaml").write_text(f'contributors:\n  ann@x.org: "{A.lower()}"\n  clinic-north: "{B}"\n')
    csv_reg = ContributorsRegistry.load(tmp_path / "c.csv")
    yaml_reg = ContributorsRegistry.load(tmp_path / "c.yaml")
    assert dict(csv_reg.addresses) == dict(yaml_reg.addresses) == {"ann@x.org": A, "clinic-north": B}
    assert csv_reg.require(["clinic-north", "ann@x.org"]) == {"ann@x.org": A, "clinic-north": B}


def test_every_contributor_without_address_is_named_in_one_error(tmp_path):
    (tmp_path / "c.csv").write_text(f"contributor,address\nann@x.org,{A}\n")
    reg = ContributorsRegistry.load(tmp_path / "c.csv")
    with pytest.raises(MissingAddressError) as err:
        reg.require(["ann@x.org", "zed@x.org", "bob@x.org", "zed@x.org"])
    assert err.value.missing == ["bob@x.org", "zed@x.org"]
    assert "bob@x.org, zed@x.org" in str(err.value) and "c.csv" in str(err.value)


@pytest.mark.parametrize(
    "body, words",
    [
        (f"contributor,address\nann,{A[:-1]}\n", "not an EVM address"),
        (f"contributor,address\nann,{A[:3]}{A[3:].swapcase()}\n", "checksum"),  # mixed case, wrong checksum
        (f"contributor,address\nann,{A}\nann,{B}\n", "listed twice"),
        (f"who,address\nann,{A}\n", "header"),
        ("who,where\n", "header"),  # a header alone is a registry, and must be the right one
        (f"contributor,address\n,{A}\n", "empty contributor id"),
    ],
)
def test_malformed_csv_rows_are_named(tmp_path, body, words):
    (tmp_path / "c.csv").write_text(body)
    with pytest.raises(ContributorsError, match=words):
        ContributorsRegistry.load(tmp_path / "c.csv")


def test_unquoted_yaml_address_is_refused_not_mangled(tmp_path):
    (tmp_path / "c.yaml").write_text(f"ann: {A.lower()}\n")  # YAML reads 0x... as an integer
    with pytest.raises(ContributorsError, match="quote it"):
        ContributorsRegistry.load(tmp_path / "c.yaml")


def test_missing_file_says_how_to_create_it(tmp_path):
    with pytest.raises(ContributorsError, match="does not exist"):
        ContributorsRegistry.load(tmp_path / "nope.csv")
