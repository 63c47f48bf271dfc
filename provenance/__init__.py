"""Provenance records, Merkle trees, royalty contracts, the chain client and the auditor."""
