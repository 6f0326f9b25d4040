// The MicroPython VM's network and flash, for running the whole node (tests/mpy/vmboard.py).
//
// TCP bridge: the VM has no sockets, so the runner gives it the JS module `jsnet`, backed by Node's
// `net` (and `tls`) sockets. Each connection is also a character device /dev/sock<N> in the VM's file
// system, so the VM reads and writes bytes with ordinary file I/O that goes straight between the
// wasm heap and the socket: write() takes at most what the connection's send window has room for
// (like lwIP's TCP send buffer on an ESP32: the rest must wait for drain()), read() gives what has
// arrived or 0. Waiting is done on promises (readable/writable), which the VM's asyncio awaits.
// Faults: jsnet.fault("down"|"stall"|"wifi", on) drops every connection and refuses new ones
// (broker outage, relay cut) or accepts and then passes no byte either way (a stalled connect).
//
// Flash: --flash HOSTDIR=VMDIR copies a host directory into the VM's file system and mirrors every
// change back at once (write-through), so a VM killed at any moment leaves the host directory as
// a power cut leaves a node's flash, and the next VM starts on it.
import { readFileSync, readdirSync, statSync, mkdirSync, writeFileSync, openSync, writeSync,
  closeSync, renameSync, unlinkSync, rmdirSync, truncateSync, existsSync } from "node:fs";
import { join } from "node:path";
import net from "node:net";
import tls from "node:tls";

export function installNet(mp, opts = {}) {
  const FS = mp.FS;
  const window = opts.window || 5744; // lwIP TCP_SND_BUF on the ESP32 port
  const socks = new Map();
  let next = 1;
  const faults = { down: false, stall: false, wifi: false };
  const stats = { opened: 0, closed: 0, bytesOut: 0, bytesIn: 0 };
  let lastError = "";
  const major = 64;
  try { FS.mkdir("/dev/sock"); } catch (e) { /* exists */ }

  function wake(s, kind) {
    const list = s[kind];
    s[kind] = [];
    for (const f of list) f();
  }

  function finish(s, state) {
    if (s.state === 0) s.state = state;
    wake(s, "readers");
    wake(s, "writers");
  }

  function devOps(s) {
    return {
      open() {},
      close() {},
      read(stream, buffer, offset, length) {
        let n = 0;
        while (n < length && s.rx.length) {
          const c = s.rx[0];
          const k = Math.min(length - n, c.length);
          buffer.set(c.subarray(0, k), offset + n);
          n += k;
          if (k === c.length) s.rx.shift(); else s.rx[0] = c.subarray(k);
        }
        s.rxBytes -= n;
        return n;
      },
      write(stream, buffer, offset, length) {
        if (s.state !== 0) throw new FS.ErrnoError(29); // EIO
        if (faults.stall || s.stalled) return 0;
        const n = Math.min(length, window - s.inflight);
        if (n <= 0) return 0;
        const chunk = Buffer.from(new Uint8Array(buffer.buffer, buffer.byteOffset + offset, n));
        s.inflight += n;
        stats.bytesOut += n;
        s.sock.write(chunk, () => { s.inflight -= n; wake(s, "writers"); });
        return n;
      },
    };
  }

  function open(host, port, useTls, ca, servername, verify) {
    return new Promise((resolve) => {
      if (faults.down || faults.wifi) { resolve(faults.wifi ? -113 : -111); return; }
      const id = next++;
      const s = { id, rx: [], rxBytes: 0, inflight: 0, state: 0, readers: [], writers: [], stalled: faults.stall };
      let sock;
      let done = false;
      const fail = (code) => { if (!done) { done = true; resolve(code); } finish(s, 2); };
      if (useTls) {
        // verify: the certificate chain and the name, as mbedTLS with CERT_REQUIRED and a server
        // hostname; not: nothing is checked (CERT_NONE). An IP is checked against the certificate's
        // IP addresses; SNI carries only names (RFC 6066).
        const o = { host, port, rejectUnauthorized: !!verify };
        if (ca) o.ca = ca;
        if (servername && net.isIP(servername) === 0) o.servername = servername;
        if (!verify) o.checkServerIdentity = () => undefined;
        sock = tls.connect(o);
        sock.on("secureConnect", () => { if (!done) { done = true; ready(); } });
      } else {
        sock = net.connect({ host, port });
        sock.on("connect", () => { if (!done) { done = true; ready(); } });
      }
      s.sock = sock;
      sock.setNoDelay(true);
      function ready() {
        const dev = FS.makedev(major + (id >> 8), id & 255);
        FS.registerDevice(dev, devOps(s));
        FS.mkdev(`/dev/sock/${id}`, 0o666, dev);
        socks.set(id, s);
        stats.opened++;
        resolve(id);
      }
      sock.on("data", (d) => {
        if (faults.stall || s.stalled) return; // bytes swallowed: nothing reaches the VM
        stats.bytesIn += d.length;
        s.rx.push(new Uint8Array(d));
        s.rxBytes += d.length;
        wake(s, "readers");
      });
      sock.on("end", () => finish(s, 1));
      sock.on("close", () => finish(s, s.state || 1));
      sock.on("error", (e) => { lastError = String(e.code || e.message); fail(-(e.errno ? Math.abs(e.errno) : 104)); });
    });
  }

  function get(id) { return socks.get(id); }

  const jsnet = {
    open,
    readable(id) {
      const s = get(id);
      return new Promise((resolve) => {
        if (!s || s.rxBytes > 0 || s.state !== 0) resolve(0); else s.readers.push(() => resolve(0));
      });
    },
    writable(id) {
      const s = get(id);
      return new Promise((resolve) => {
        if (!s || s.state !== 0 || (s.inflight < window && !faults.stall && !s.stalled)) resolve(0);
        else s.writers.push(() => resolve(0));
      });
    },
    state(id) { const s = get(id); return s ? s.state : 2; },
    avail(id) { const s = get(id); return s ? s.rxBytes : 0; },
    room(id) { const s = get(id); return s && s.state === 0 && !faults.stall && !s.stalled ? window - s.inflight : 0; },
    // Run JS's garbage collector (node --expose-gc): a promise the VM awaited keeps a Python
    // callback alive on the JS side until then, which would count as the node's heap.
    gc() { if (globalThis.gc) globalThis.gc(); return 0; },
    close(id) {
      const s = get(id);
      if (!s) return 0;
      socks.delete(id);
      stats.closed++;
      try { FS.unlink(`/dev/sock/${id}`); } catch (e) { /* gone */ }
      s.sock.destroy();
      finish(s, 2);
      return 0;
    },
    fault(kind, on) {
      faults[kind] = !!on;
      if (on && kind !== "stall") {
        for (const s of socks.values()) { s.sock.destroy(); finish(s, 2); }
      }
      if (!on) for (const s of socks.values()) { wake(s, "readers"); wake(s, "writers"); }
      return 0;
    },
    wifi() { return faults.wifi ? 0 : 1; },
    error() { return lastError; },
    open_count() { return socks.size; },
    stats() { return JSON.stringify(stats); },
  };
  mp.registerJsModule("jsnet", jsnet);
  return { jsnet, stats, socks };
}

// -- flash: a host directory mirrored into the VM's file system ----------------------------------
export function installFlash(mp, hostDir, vmDir) {
  const FS = mp.FS;
  const MEMFS = FS.filesystems.MEMFS;
  mkdirSync(hostDir, { recursive: true });
  const parts = vmDir.split("/").filter(Boolean);
  let cur = "";
  for (const p of parts) { cur += "/" + p; try { FS.mkdir(cur); } catch (e) { /* exists */ } }
  function load(h, v) {
    for (const name of readdirSync(h)) {
      const hp = join(h, name);
      if (statSync(hp).isDirectory()) { try { FS.mkdir(v + "/" + name); } catch (e) { /* exists */ } load(hp, v + "/" + name); }
      else FS.writeFile(v + "/" + name, readFileSync(hp));
    }
  }
  load(hostDir, vmDir);
  const prefix = vmDir.replace(/\/$/, "") + "/";
  const host = (node) => {
    const p = FS.getPath(node);
    return p === vmDir ? hostDir : (p.startsWith(prefix) ? join(hostDir, p.slice(prefix.length)) : null);
  };
  const dirOps = MEMFS.ops_table.dir.node;
  const fileNode = MEMFS.ops_table.file.node;
  const fileStream = MEMFS.ops_table.file.stream;
  const wrap = (obj, name, after) => {
    const orig = obj[name];
    obj[name] = function (...args) { const pre = after.pre ? after.pre(...args) : undefined; const r = orig.apply(this, args); after.post(r, pre, ...args); return r; };
  };
  wrap(dirOps, "mknod", { post(node, pre, parent, name, mode) {
    const h = host(parent);
    if (!h) return;
    if (FS.isDir(mode)) mkdirSync(join(h, name), { recursive: true });
    else if (!existsSync(join(h, name))) writeFileSync(join(h, name), "");
  } });
  wrap(dirOps, "rename", { pre(old) { return host(old); }, post(r, oldHost, old, newDir, newName) {
    const h = host(newDir);
    if (oldHost && h) renameSync(oldHost, join(h, newName));
  } });
  wrap(dirOps, "unlink", { post(r, pre, parent, name) { const h = host(parent); if (h) try { unlinkSync(join(h, name)); } catch (e) { /* gone */ } } });
  wrap(dirOps, "rmdir", { post(r, pre, parent, name) { const h = host(parent); if (h) try { rmdirSync(join(h, name)); } catch (e) { /* gone */ } } });
  wrap(fileNode, "setattr", { post(r, pre, node, attr) {
    const h = host(node);
    if (h && attr.size !== undefined) truncateSync(h, attr.size);
  } });
  wrap(fileStream, "write", { post(n, pre, stream, buffer, offset, length, position) {
    const h = host(stream.node);
    if (!h || !n) return;
    const fd = openSync(h, "r+");
    try { writeSync(fd, new Uint8Array(buffer.buffer, buffer.byteOffset + offset, n), 0, n, position); } finally { closeSync(fd); }
  } });
}
