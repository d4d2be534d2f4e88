// Drives fake-node with polkadot.js (@polkadot/api), as tests/client_libraries.rs expects.
//
// Usage: node polkadot_js.mjs WS_URL OLD_BLOCK_HASH LAST_BLOCK_NUMBER
//
// Prints one JSON object per line on stdout:
//   {"event":"connected", "library", "version", "chain", "specName", "specVersion"}
//   {"event":"ready"}                                   once the finalized-heads subscription is live
//   {"event":"finalized", "number", "hash", "release": {"major", "minor", "patch"}, "specVersion"}
//                                                       one per finalized head
//   {"event":"release", "at", "number", "release": {...}}   at OLD_BLOCK_HASH, after the last head
//   {"event":"error", "message"}                        then exit 1
// It exits 0 after the finalized head LAST_BLOCK_NUMBER. The release is read at each block through
// `api.at(hash)`, so a runtime upgrade makes polkadot.js fetch that block's runtime version and
// metadata, as a real tool reading history does.
import { ApiPromise, WsProvider } from '@polkadot/api';
import { packageInfo } from '@polkadot/api/packageInfo';

const emit = (event, fields = {}) => process.stdout.write(`${JSON.stringify({ event, ...fields })}\n`);
// A failed WebSocket connection rejects with an ErrorEvent, not an Error: dig out its message.
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
if (!url || !oldHash || !lastNumberArg) fail('usage: polkadot_js.mjs WS_URL OLD_BLOCK_HASH LAST_BLOCK_NUMBER');
const lastNumber = Number(lastNumberArg);

/** The release at `hash`, by field name, through the metadata of the runtime at that block. */
const releaseAt = async (api, hash) => {
  const at = await api.at(hash);
  const release = await at.query.environment.currentReleaseVersion();
  const { major, minor, patch } = release.toJSON();
  return { release: { major, minor, patch }, specVersion: at.runtimeVersion.specVersion.toNumber() };
};

try {
  // throwOnConnect: a node that is not there is an error now, not an endless reconnect loop.
  const api = await ApiPromise.create({ provider: new WsProvider(url), throwOnConnect: true, noInitWarn: true });
  emit('connected', {
    library: packageInfo.name,
    version: packageInfo.version,
    chain: (await api.rpc.system.chain()).toString(),
    specName: api.runtimeVersion.specName.toString(),
    specVersion: api.runtimeVersion.specVersion.toNumber(),
  });

  // Finalized heads are handled one after another, so lines come out in block order.
  let queue = Promise.resolve();
  await api.rpc.chain.subscribeFinalizedHeads((header) => {
    queue = queue
      .then(async () => {
        const number = header.number.toNumber();
        const hash = header.hash.toHex();
        const { release, specVersion } = await releaseAt(api, hash);
        emit('finalized', { number, hash, release, specVersion });
        if (number >= lastNumber) {
          // Read history last, so the old block's runtime is no longer the current one.
          const old = await releaseAt(api, oldHash);
          const oldHeader = await api.rpc.chain.getHeader(oldHash);
          emit('release', { at: oldHash, number: oldHeader.number.toNumber(), release: old.release });
          await api.disconnect();
          process.exit(0);
        }
      })
      .catch(fail);
  });
  emit('ready');
} catch (error) {
  fail(error);
}
