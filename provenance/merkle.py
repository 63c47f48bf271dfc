"""OpenZeppelin StandardMerkleTree, byte for byte: leaves, root, proofs, dump.

Pure logic, no I/O. A leaf is `keccak256(bytes.concat(keccak256(abi.encode(values))))`,
leaves are sorted by hash, the tree is a complete binary tree stored as an array (root at
index 0, leaves from the end) and inner nodes hash their children as a sorted pair, exactly as
`@openzeppelin/merkle-tree` builds it, so its JS library (and `MerkleProof.sol`) accept our
roots and proofs. The leaf types are a parameter: `("address", "uint256")` serves both share
leaves `(account, weight_bps)` and absolute leaves `(account, amount)`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import eth_abi
from eth_hash.auto import keccak
from eth_utils import to_checksum_address

from provenance.errors import ProvenanceError

SHARE_LEAF = ("address", "uint256")

Leaf = tuple[Any, ...]


def leaf_hash(leaf_types: Sequence[str], value: Sequence[Any]) -> bytes:
    """The StandardMerkleTree leaf hash (double keccak guards against second preimages)."""
    if (
        tuple(leaf_types) == SHARE_LEAF
        and isinstance(value[0], str)
        and type(value[1]) is int
        and 0 <= value[1] < 2**256
    ):
        # abi.encode(address, uint256) is two left-padded words; eth_abi takes ~10x longer.
        encoded = bytes(12) + bytes.fromhex(value[0][2:]) + value[1].to_bytes(32, "big")
    else:
        encoded = eth_abi.encode(list(leaf_types), list(value))
    return keccak(keccak(encoded))


def hash_pair(a: bytes, b: bytes) -> bytes:
    """Commutative node hash, as `MerkleProof.sol` and the JS library compute it."""
    return keccak(a + b) if a <= b else keccak(b + a)


def process_proof(leaf: bytes, proof: Sequence[bytes | str]) -> bytes:
    """Fold a proof onto a leaf hash; the proof is valid if this equals the root."""
    node = leaf
    for sibling in proof:
        node = hash_pair(node, _as_bytes32(sibling))
    return node


def verify_proof(
    root: bytes | str, leaf_types: Sequence[str], value: Sequence[Any], proof: Sequence[bytes | str]
) -> bool:
    """Check one `value` against `root` independently of any tree object."""
    return process_proof(leaf_hash(leaf_types, value), proof) == _as_bytes32(root)


@dataclass(frozen=True)
class StandardMerkleTree:
    """A built tree. Use `StandardMerkleTree.of(values, leaf_types)`."""

    leaf_types: tuple[str, ...]
    values: tuple[Leaf, ...]  # in input order
    tree: tuple[bytes, ...]
    tree_index: tuple[int, ...]  # tree_index[i] is where values[i] sits in `tree`

    @classmethod
    def of(
        cls, values: Sequence[Sequence[Any]], leaf_types: Sequence[str] = SHARE_LEAF
    ) -> StandardMerkleTree:
        """Build the tree of `values` (at least one), as `StandardMerkleTree.of` in the JS library does:
        each leaf normalized (addresses checksummed), leaves sorted by hash; `values` keep input order."""
        if not values:
            raise ProvenanceError("a Merkle tree needs at least one leaf")
        types = tuple(leaf_types)
        normalized = tuple(_normalize(types, v) for v in values)
        hashes = [leaf_hash(types, v) for v in normalized]
        order = sorted(range(len(hashes)), key=hashes.__getitem__)
        n = len(hashes)
        tree: list[bytes] = [b""] * (2 * n - 1)
        tree_index = [0] * n
        for position, value_index in enumerate(order):
            slot = len(tree) - 1 - position
            tree[slot] = hashes[value_index]
            tree_index[value_index] = slot
        for i in range(len(tree) - 1 - n, -1, -1):
            tree[i] = hash_pair(tree[2 * i + 1], tree[2 * i + 2])
        return cls(types, normalized, tuple(tree), tuple(tree_index))

    @property
    def root(self) -> str:
        """The root as 0x-hex, as the JS library's `tree.root` and the distributor give it."""
        return "0x" + self.tree[0].hex()

    @property
    def root_bytes(self) -> bytes:
        """The root as 32 raw bytes (a `bytes32`)."""
        return self.tree[0]

    def proof(self, index: int) -> list[str]:
        """The proof for `values[index]`, as 0x-hex siblings from leaf to root."""
        node = self.tree_index[index]
        proof: list[str] = []
        while node > 0:
            sibling = node - 1 if node % 2 == 0 else node + 1
            proof.append("0x" + self.tree[sibling].hex())
            node = (node - 1) // 2
        return proof

    def proofs(self) -> list[list[str]]:
        """Every value's proof, in `values` (input) order: `proofs()[i] == proof(i)`."""
        return [self.proof(i) for i in range(len(self.values))]

    def dump(self) -> dict[str, Any]:
        """The JSON `StandardMerkleTree.dump()` writes, loadable by `StandardMerkleTree.load()`."""
        return {
            "format": "standard-v1",
            "leafEncoding": list(self.leaf_types),
            "tree": ["0x" + node.hex() for node in self.tree],
            "values": [
                {"value": [_json_value(x) for x in value], "treeIndex": index}
                for value, index in zip(self.values, self.tree_index, strict=True)
            ],
        }


def _normalize(types: tuple[str, ...], value: Sequence[Any]) -> Leaf:
    if len(value) != len(types):
        raise ProvenanceError(f"leaf {value!r} has {len(value)} fields, expected {len(types)} ({types})")
    out: list[Any] = []
    for kind, item in zip(types, value, strict=True):
        if kind == "address":
            out.append(to_checksum_address(item))
        elif kind.startswith("uint") or kind.startswith("int"):
            if isinstance(item, bool) or not isinstance(item, int):
                raise ProvenanceError(f"leaf field {item!r} must be an integer for type {kind}")
            out.append(item)
        else:
            out.append(item)
    return tuple(out)


def _json_value(item: Any) -> Any:
    return str(item) if isinstance(item, int) else item


def _as_bytes32(node: bytes | str) -> bytes:
    raw = bytes.fromhex(node[2:] if node.startswith("0x") else node) if isinstance(node, str) else node
    if len(raw) != 32:
        raise ProvenanceError(f"Merkle node {node!r} is not 32 bytes")
    return raw
