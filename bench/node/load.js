// Node `ws` pipelined client for `python -m bench.loadcompare`: keeps IN_FLIGHT
// messages in flight on one connection (one send per echo, as ws users write it)
// and prints one JSON line with the measured window's count and own CPU time.
'use strict';
const WebSocket = require('ws');

const [url, size, inFlight, warmup, duration, connectUrl] = process.argv.slice(2);
const payload = Buffer.alloc(Number(size), 97);
const ws = new WebSocket(url, { perMessageDeflate: false, maxPayload: 64 * 1024 * 1024 });
let count = 0;
let started = false;

function start() {
  started = true;
  for (let i = 0; i < Number(inFlight); i++) ws.send(payload);
  setTimeout(() => {
    const c0 = count;
    const t0 = process.hrtime.bigint();
    const u0 = process.cpuUsage();
    setTimeout(() => {
      const wall = Number(process.hrtime.bigint() - t0) / 1e9;
      const u = process.cpuUsage(u0);
      const n = count - c0;
      console.log(JSON.stringify({ count: n, wall_s: wall, client_cpu_s: (u.user + u.system) / 1e6 }));
      process.exit(0);
    }, Number(duration) * 1000);
  }, Number(warmup) * 1000);
}

ws.on('open', () => {
  if (connectUrl) ws.send(JSON.stringify({ apiKey: 'bench-key', url: connectUrl }));
  else start();
});
ws.on('message', () => {
  if (!started) {
    start(); // the relay's "connected" reply
    return;
  }
  count++;
  ws.send(payload);
});
