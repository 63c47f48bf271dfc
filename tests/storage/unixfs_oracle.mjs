// Independent CID oracle: npm ipfs-unixfs-importer with Kubo's `ipfs add` settings.
// Usage: node unixfs_oracle.mjs v0|v1 FILE...   -> one CID per line, in argument order.
// v0 = Kubo default (CIDv0, dag-pb `file` leaves); v1 = `--cid-version=1` (raw leaves).
// ORACLE_CHUNK_SIZE / ORACLE_MAX_LINKS override 262144 / 174 (small deep trees in tests).
import { createReadStream } from 'node:fs'
import { MemoryBlockstore } from 'blockstore-core/memory'
import { importer } from 'ipfs-unixfs-importer'
import { fixedSize } from 'ipfs-unixfs-importer/chunker'
import { balanced } from 'ipfs-unixfs-importer/layout'

const [mode, ...files] = process.argv.slice(2)
if (!['v0', 'v1'].includes(mode) || files.length === 0) {
  console.error('usage: node unixfs_oracle.mjs v0|v1 FILE...')
  process.exit(2)
}
const options = {
  cidVersion: mode === 'v0' ? 0 : 1,
  rawLeaves: mode === 'v1',
  leafType: 'file',
  reduceSingleLeafToSelf: true,
  chunker: fixedSize({ chunkSize: Number(process.env.ORACLE_CHUNK_SIZE ?? 262144) }),
  layout: balanced({ maxChildrenPerNode: Number(process.env.ORACLE_MAX_LINKS ?? 174) }),
  wrapWithDirectory: false
}
for (const path of files) {
  const blockstore = new MemoryBlockstore()
  let root
  for await (const entry of importer([{ content: createReadStream(path) }], blockstore, options)) {
    root = entry.cid
  }
  console.log(root.toString())
}
