"""provenance.merkle against the npm @openzeppelin/merkle-tree on random trees of 1..10,000 leaves."""

from __future__ import annotations

import json
import random
import subprocess
from pathlib import Path

import pytest
from eth_utils import to_checksum_address

from provenance.errors import ProvenanceError
from provenance.merkle import SHARE_LEAF, StandardMerkleTree, leaf_hash, verify_proof

ORACLE = Path(__file__).with_name("oz_merkle.mjs")
REPO = Path(__file__).resolve().parents[2]
SIZES = [1, 2, 3, 4, 5, 7, 8, 9, 16, 17, 31, 100, 257, 1000, 4097, 10_000]


def _random_values(rng: random.Random, n: int, amounts: bool) -> list[list]:
    top = 2**256 - 1 if amounts else 10_000
    return [[to_checksum_address(rng.randbytes(20)), rng.randint(0, top)] for _ in range(n)]


def _oracle(cases: list[dict]) -> list[dict]:
    payload = json.dumps(cases)
    out = subprocess.run(
        ["node", str(ORACLE)],
        input=payload,
        capture_output=True,
        text=True,
        check=True,
        cwd=REPO,
        timeout=120,
    )
    return json.loads(out.stdout)


def test_matches_openzeppelin_merkle_tree_on_random_trees() -> None:
    rng = random.Random(5)
    sizes = SIZES + [rng.randint(1, 10_000) for _ in range(4)]
    trees, cases = [], []
    for k, n in enumerate(sizes):
        values = _random_values(rng, n, amounts=k % 3 == 2)
        indices = list(range(n)) if n <= 64 else rng.sample(range(n), 40)
        trees.append((StandardMerkleTree.of(values, SHARE_LEAF), indices))
        encoded = [[a, str(w)] for a, w in values]
        cases.append({"leafEncoding": list(SHARE_LEAF), "values": encoded, "proofIndices": indices})
    for (tree, indices), expected in zip(trees, _oracle(cases), strict=True):
        assert expected["verified"]
        assert tree.root == expected["root"]
        assert [tree.proof(i) for i in indices] == expected["proofs"]
        assert tree.dump() == expected["dump"]
        for i in indices[:5]:
            assert verify_proof(tree.root, SHARE_LEAF, tree.values[i], tree.proof(i))


def test_forged_proofs_and_values_fail() -> None:
    rng = random.Random(1)
    values = _random_values(rng, 50, amounts=False)
    tree = StandardMerkleTree.of(values)
    address, weight = tree.values[7]
    proof = tree.proof(7)
    assert verify_proof(tree.root, SHARE_LEAF, (address, weight), proof)
    assert not verify_proof(tree.root, SHARE_LEAF, (address, weight + 1), proof)
    assert not verify_proof(tree.root, SHARE_LEAF, tree.values[8], proof)
    assert not verify_proof(tree.root, SHARE_LEAF, (address, weight), proof[:-1])
    # An inner node is not a leaf: the double hash keeps it from passing as one.
    assert tree.root_bytes != leaf_hash(SHARE_LEAF, (address, weight))


def test_single_leaf_root_is_the_leaf_and_empty_tree_is_refused() -> None:
    value = (to_checksum_address("0x" + "11" * 20), 10_000)
    tree = StandardMerkleTree.of([value])
    assert tree.root_bytes == leaf_hash(SHARE_LEAF, value)
    assert tree.proof(0) == []
    with pytest.raises(ProvenanceError, match="at least one leaf"):
        StandardMerkleTree.of([])
    with pytest.raises(ProvenanceError, match="integer"):
        StandardMerkleTree.of([(value[0], "10000")])


def test_share_leaf_fast_path_equals_abi_encoding() -> None:
    import eth_abi
    from eth_hash.auto import keccak

    rng = random.Random(9)
    for weight in [0, 1, 10_000, 2**255, 2**256 - 1]:
        address = to_checksum_address(rng.randbytes(20))
        expected = keccak(keccak(eth_abi.encode(list(SHARE_LEAF), [address, weight])))
        assert leaf_hash(SHARE_LEAF, (address, weight)) == expected
