// Oracle for provenance/merkle.py: builds each tree with @openzeppelin/merkle-tree.
// stdin: [{"leafEncoding": [...], "values": [[...], ...], "proofIndices": [i, ...]}, ...]
// stdout: [{"root": "0x..", "proofs": [[..], ..], "dump": {...}, "verified": true}, ...]
import { StandardMerkleTree } from "@openzeppelin/merkle-tree";

const chunks = [];
for await (const chunk of process.stdin) chunks.push(chunk);
const cases = JSON.parse(Buffer.concat(chunks).toString("utf8"));

const results = cases.map(({ leafEncoding, values, proofIndices }) => {
  const tree = StandardMerkleTree.of(values, leafEncoding);
  const proofs = proofIndices.map((i) => tree.getProof(values[i]));
  const verified = proofIndices.every((i, k) => StandardMerkleTree.verify(tree.root, leafEncoding, values[i], proofs[k]));
  return { root: tree.root, proofs, dump: tree.dump(), verified };
});
process.stdout.write(JSON.stringify(results));
