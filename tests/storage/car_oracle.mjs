// Independent CAR oracle: npm @ipld/car reads our CARs and writes CARs of its own for us to import.
// Usage: node car_oracle.mjs read FILE.car            -> JSON {roots, blocks: [{cid, size, hashOk}]}
//        node car_oracle.mjs write v0|v1 FILE OUT.car -> root CID (ipfs-unixfs-importer, `ipfs add` layout)
import { createReadStream, createWriteStream } from 'node:fs'
import { readFile } from 'node:fs/promises'
import { Readable } from 'node:stream'
import { pipeline } from 'node:stream/promises'
import { CarReader, CarWriter } from '@ipld/car'
import { importer } from 'ipfs-unixfs-importer'
import { fixedSize } from 'ipfs-unixfs-importer/chunker'
import { balanced } from 'ipfs-unixfs-importer/layout'
import { sha256 } from 'multiformats/hashes/sha2'
import { equals } from 'multiformats/bytes'

const [command, ...args] = process.argv.slice(2)

if (command === 'read') {
  const reader = await CarReader.fromBytes(await readFile(args[0]))
  const blocks = []
  for await (const { cid, bytes } of reader.blocks()) {
    const digest = await sha256.digest(bytes)
    blocks.push({ cid: cid.toString(), size: bytes.length, hashOk: equals(digest.digest, cid.multihash.digest) })
  }
  console.log(JSON.stringify({ roots: (await reader.getRoots()).map(String), blocks }))
} else if (command === 'write') {
  const [mode, file, out] = args
  const blocks = []
  const collector = { put: async (cid, bytes) => { blocks.push({ cid, bytes }); return cid } }
  const options = {
    cidVersion: mode === 'v0' ? 0 : 1,
    rawLeaves: mode === 'v1',
    leafType: 'file',
    reduceSingleLeafToSelf: true,
    chunker: fixedSize({ chunkSize: 262144 }),
    layout: balanced({ maxChildrenPerNode: 174 }),
    wrapWithDirectory: false
  }
  let root
  for await (const entry of importer([{ content: createReadStream(file) }], collector, options)) root = entry.cid
  const { writer, out: car } = CarWriter.create([root])
  const written = pipeline(Readable.from(car), createWriteStream(out))
  for (const block of blocks.reverse()) await writer.put(block)
  await writer.close()
  await written
  console.log(root.toString())
} else {
  console.error('usage: node car_oracle.mjs read FILE.car | write v0|v1 FILE OUT.car')
  process.exit(2)
}
