"""Content addressing: Kubo-identical UnixFS CIDs, the blockstore and pin backends, CAR, snapshots."""
