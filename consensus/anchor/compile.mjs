// Compile CheckpointRegistry.sol with solcjs (npm `solc`, pinned in package.json) and
// print the artifact as JSON: ABI, creation and runtime bytecode, compiler and settings.
//
//   node consensus/anchor/compile.mjs > consensus/anchor/CheckpointRegistry.json
//
// The artifact is committed; tests/unit/test_contract_artifact.py runs this again and
// checks that the committed bytecode is what the committed source compiles to.
import { createHash } from "node:crypto";
import { readFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { createRequire } from "node:module";

const require = createRequire(import.meta.url);
const solc = require("solc");
const here = dirname(fileURLToPath(import.meta.url));
const NAME = "CheckpointRegistry";
const source = readFileSync(join(here, `${NAME}.sol`), "utf8");
// Cancun: supported by anvil and by py-evm (eth-tester), the two chains the tests use.
const settings = {
  optimizer: { enabled: true, runs: 200 },
  evmVersion: "cancun",
  metadata: { bytecodeHash: "none" }, // no source-path-dependent hash in the bytecode
  outputSelection: { "*": { "*": ["abi", "evm.bytecode.object", "evm.deployedBytecode.object"] } },
};
const input = { language: "Solidity", sources: { [`${NAME}.sol`]: { content: source } }, settings };
const output = JSON.parse(solc.compile(JSON.stringify(input)));
const errors = (output.errors || []).filter((e) => e.severity === "error");
if (errors.length) {
  for (const e of errors) process.stderr.write(e.formattedMessage + "\n");
  process.exit(1);
}
const contract = output.contracts[`${NAME}.sol`][NAME];
const artifact = {
  contractName: NAME,
  compiler: `solc-js ${solc.version()}`,
  settings,
  sourceSha256: createHash("sha256").update(source).digest("hex"),
  abi: contract.abi,
  bytecode: "0x" + contract.evm.bytecode.object,
  deployedBytecode: "0x" + contract.evm.deployedBytecode.object,
};
process.stdout.write(JSON.stringify(artifact, null, 2) + "\n");
