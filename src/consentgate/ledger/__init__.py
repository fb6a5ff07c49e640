"""The consent ledger: leaves, the Merkle tree and checkpoints."""
