// Stand-in for the node side still to land: a proxy in front of fake-node that adds metadata
// (substrate V14 + Environment.CurrentReleaseVersion), runtime apis, state_subscribeRuntimeVersion,
// chain_getBlock, chain_subscribeAllHeads, state_getStorageHash. For checking the client scripts only.
import WebSocket, { WebSocketServer } from 'ws';
import fs from 'fs';
import { blake2AsHex } from '@polkadot/util-crypto';
const [port, upstream, logfile] = process.argv.slice(2);
const meta = fs.readFileSync('/tmp/disc/meta14.hex', 'utf8');
const log = (s) => fs.appendFileSync(logfile, s + '\n');
const apis = [["0xdf6acb689907609b",5],["0x37e397fc7c91f5e4",2]];
const compactLen = (n) => { // SCALE compact for n < 2^30
  if (n < 64) return Buffer.from([n << 2]);
  if (n < 16384) { const b = Buffer.alloc(2); b.writeUInt16LE((n << 2) | 1); return b; }
  const b = Buffer.alloc(4); b.writeUInt32LE(((n << 2) | 2) >>> 0); return b;
};
const metaBytes = Buffer.from(meta.slice(2), 'hex');
const opaque = '0x' + Buffer.concat([compactLen(metaBytes.length), metaBytes]).toString('hex');
let n = 0;
new WebSocketServer({ port: +port }).on('connection', (client) => {
  const id = ++n; log(`# conn ${id} open`);
  const up = new WebSocket(upstream); const q = []; const pending = new Map(); let nextId = 1e6;
  const send = (obj) => { const s = JSON.stringify(obj); log(`${id}<<${s.slice(0, 300)}`); client.send(s); };
  const upCall = (method, params, then) => { const rid = nextId++; pending.set(rid, then); const s = JSON.stringify({ jsonrpc: '2.0', id: rid, method, params }); up.readyState === 1 ? up.send(s) : q.push(s); };
  const subs = new Map(); // upstream sub id -> rename
  up.on('open', () => { q.forEach((m) => up.send(m)); q.length = 0; });
  client.on('message', (raw) => {
    const s = raw.toString(); log(`${id}> ${s.slice(0, 300)}`);
    const req = JSON.parse(s);
    const r = (result) => send({ jsonrpc: '2.0', id: req.id, result });
    switch (req.method) {
      case 'state_getMetadata': return r(meta);
      case 'state_call': {
        const [fn] = req.params;
        if (fn === 'Metadata_metadata_versions') return r('0x040e000000');
        if (fn === 'Metadata_metadata') return r(opaque);
        break;
      }
      case 'state_getStorageHash':
        if (req.params[0] === '0x3a636f6465') return upCall('state_getRuntimeVersion', [req.params[1]], (m) => r(blake2AsHex(String(m.result.specVersion))));
        break;
      case 'state_subscribeRuntimeVersion':
        return upCall('state_getRuntimeVersion', [], (m) => { r('rv1'); send({ jsonrpc: '2.0', method: 'state_runtimeVersion', params: { subscription: 'rv1', result: { ...m.result, apis } } }); });
      case 'chain_getBlock':
        return upCall('chain_getHeader', req.params, (m) => r(m.result ? { block: { header: m.result, extrinsics: [] }, justifications: null } : null));
      case 'chain_subscribeAllHeads':
        return upCall('chain_subscribeNewHeads', [], (m) => { subs.set(m.result, 'chain_allHead'); r(m.result); });
      case 'chain_unsubscribeAllHeads': req.method = 'chain_unsubscribeNewHeads'; break;
      case 'rpc_methods':
        return upCall('rpc_methods', [], (m) => r({ methods: [...m.result.methods, 'state_getMetadata', 'state_call', 'chain_getBlock', 'chain_subscribeAllHeads', 'state_getStorageHash', 'state_subscribeRuntimeVersion'] }));
    }
    if (req.method === 'state_getRuntimeVersion' || req.method === 'chain_getRuntimeVersion') pending.set(req.id, 'rv');
    up.readyState === 1 ? up.send(JSON.stringify(req)) : q.push(JSON.stringify(req));
  });
  up.on('message', (raw) => {
    let s = raw.toString(); const msg = JSON.parse(s);
    const p = pending.get(msg.id);
    if (typeof p === 'function') { pending.delete(msg.id); return p(msg); }
    if (p === 'rv' && msg.result) { msg.result.apis = apis; s = JSON.stringify(msg); }
    if (msg.params && subs.has(msg.params.subscription)) { msg.method = subs.get(msg.params.subscription); s = JSON.stringify(msg); }
    log(`${id}< ${s.slice(0, 300)}`); client.send(s);
  });
  client.on('close', () => { log(`# conn ${id} closed`); up.close(); });
  up.on('close', () => client.close());
});
console.log('up');
