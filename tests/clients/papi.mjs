// Drives fake-node with polkadot-api, as tests/client_libraries.rs expects.
//
// Usage: node papi.mjs WS_URL OLD_BLOCK_HASH LAST_BLOCK_NUMBER
//
// Prints one JSON object per line on stdout:
//   {"event":"connected", "library", "version", "chain", "genesis"}
//   {"event":"ready"}                                   once the first finalized block is known
//   {"event":"finalized", "number", "hash", "release": {"major", "minor", "patch"}}  per finalized block
//   {"event":"error", "message"}                        then exit 1
// It exits 0 after finalized block LAST_BLOCK_NUMBER. OLD_BLOCK_HASH is only checked against the
// first finalized block (polkadot-api reads at pinned blocks only, so history is not reachable).
// No code generation: the release is read
// through the unsafe (metadata-typed at run time) API at each finalized block while it is pinned.
import { createClient } from 'polkadot-api';
import { getWsProvider } from 'polkadot-api/ws';
import { WebSocket } from 'ws';
import { readFileSync } from 'node:fs';

const emit = (event, fields = {}) => process.stdout.write(`${JSON.stringify({ event, ...fields })}\n`);
const describe = (error) => error?.stack ?? error?.message ?? error?.error?.message ?? JSON.stringify(error);
const fail = (error) => {
  emit('error', { message: describe(error) });
  process.exit(1);
};

// stdout carries only this script's JSON lines: the library's own logs go to stderr.
console.log = console.info = console.warn = console.debug = (...args) => console.error(...args);

// A library failing inside its own callbacks must still end the run with an error line.
process.on('uncaughtException', fail);
process.on('unhandledRejection', fail);

const [url, oldHash, lastNumberArg] = process.argv.slice(2);
if (!url || !oldHash || !lastNumberArg) fail('usage: papi.mjs WS_URL OLD_BLOCK_HASH LAST_BLOCK_NUMBER');
const lastNumber = Number(lastNumberArg);
const { version } = JSON.parse(
  readFileSync(new URL('./node_modules/polkadot-api/package.json', import.meta.url), 'utf8'),
);

const asRelease = ({ major, minor, patch }) => ({ major, minor, patch });

try {
  // Node 20 has no global WebSocket: hand polkadot-api the `ws` package's.
  const client = createClient(getWsProvider(url, { websocketClass: WebSocket }));
  const api = client.getUnsafeApi();
  const spec = await client.getChainSpecData();
  emit('connected', { library: 'polkadot-api', version, chain: spec.name, genesis: spec.genesisHash });

  let ready = false;
  let queue = Promise.resolve();
  client.finalizedBlock$.subscribe({
    next: (block) => {
      queue = queue
        .then(async () => {
          if (!ready) {
            ready = true;
            emit('ready');
          }
          const release = await api.query.Environment.CurrentReleaseVersion.getValue({ at: block.hash });
          emit('finalized', { number: block.number, hash: block.hash, release: asRelease(release) });
          if (block.number >= lastNumber) {
            client.destroy();
            process.exit(0);
          }
        })
        .catch(fail);
    },
    error: fail,
  });
} catch (error) {
  fail(error);
}
