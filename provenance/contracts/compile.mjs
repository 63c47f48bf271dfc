// Reproducible compile of Caravan's contracts with the npm `solc` package.
//
// Usage: node provenance/contracts/compile.mjs [--out DIR]
// Writes one artifact per contract (ABI, bytecode, deployed bytecode, storage layout) to
// provenance/contracts/artifacts/ (or DIR). Fixed compiler settings and stable source unit
// names make a fresh compile byte-identical to the committed artifacts (a test checks).
import fs from "node:fs";
import path from "node:path";
import { createRequire } from "node:module";
import { fileURLToPath } from "node:url";
import solc from "solc";

const here = path.dirname(fileURLToPath(import.meta.url));
const require = createRequire(import.meta.url);
const ozRoot = path.dirname(require.resolve("@openzeppelin/contracts/package.json"));

const SOURCES = [
  "ProvenanceRegistry.sol",
  "RoyaltyDistributor.sol",
  "testing/TestToken.sol",
  "testing/ReentrantClaimer.sol",
  "testing/NaivePusher.sol",
  "SourceClaims.sol",
];

const SETTINGS = {
  optimizer: { enabled: true, runs: 200 },
  evmVersion: "cancun",
  metadata: { bytecodeHash: "ipfs" },
  outputSelection: {
    "*": { "*": ["abi", "evm.bytecode.object", "evm.deployedBytecode.object", "storageLayout"] },
  },
};

function findImports(name) {
  const prefix = "@openzeppelin/contracts/";
  if (name.startsWith(prefix)) {
    return { contents: fs.readFileSync(path.join(ozRoot, name.slice(prefix.length)), "utf8") };
  }
  return { error: `unresolved import ${name}: only @openzeppelin/contracts/ is available` };
}

function compile() {
  const sources = Object.fromEntries(
    SOURCES.map((name) => [name, { content: fs.readFileSync(path.join(here, name), "utf8") }]),
  );
  const input = { language: "Solidity", sources, settings: SETTINGS };
  const output = JSON.parse(solc.compile(JSON.stringify(input), { import: findImports }));
  const errors = (output.errors ?? []).filter((e) => e.severity === "error");
  for (const e of output.errors ?? []) console.error(e.formattedMessage);
  if (errors.length) process.exit(1);
  return output;
}

function writeArtifacts(output, outDir) {
  fs.mkdirSync(outDir, { recursive: true });
  for (const sourceName of SOURCES) {
    for (const [contractName, c] of Object.entries(output.contracts[sourceName])) {
      if (!c.evm.bytecode.object) continue; // interfaces: nothing to deploy
      const artifact = {
        contractName,
        sourceName,
        compiler: { name: "solc", version: solc.version(), settings: { ...SETTINGS, outputSelection: undefined } },
        abi: c.abi,
        bytecode: `0x${c.evm.bytecode.object}`,
        deployedBytecode: `0x${c.evm.deployedBytecode.object}`,
        storageLayout: c.storageLayout,
      };
      const file = path.join(outDir, `${contractName}.json`);
      fs.writeFileSync(file, `${JSON.stringify(artifact, null, 2)}\n`);
      console.log(`${contractName}: ${file}`);
    }
  }
}

const outIndex = process.argv.indexOf("--out");
const outDir = outIndex > 0 ? path.resolve(process.argv[outIndex + 1]) : path.join(here, "artifacts");
writeArtifacts(compile(), outDir);
