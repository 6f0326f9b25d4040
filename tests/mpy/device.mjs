// An emulated MicroPython board for provisioning tests: the real MicroPython
// VM (WebAssembly port) behind a serial line.
//
// usage: node device.mjs --fd N [--heap BYTES]
//
// Bytes read from file descriptor N (the master side of a pseudo-terminal,
// inherited from the test) go to the VM's REPL one character at a time, the
// way a UART feeds a board; everything the VM prints goes back to N. So the
// friendly REPL, Ctrl-A raw REPL, Ctrl-C and tracebacks are MicroPython's own,
// and the in-memory file system persists for as long as the process lives,
// like a board's flash between two provisioning runs.
//
// A soft reset (Ctrl-D on an empty line) is what a board does: the VM is
// thrown away with everything imported, a fresh one starts on the same files,
// runs /boot.py, and comes back printing what an ESP32 prints ("MPY: soft
// reboot", then the raw REPL banner, or the friendly one). After a reset from
// the raw REPL main.py does not run, as on the board; after one from the
// friendly REPL it does not run either (unlike a board: the VM could not be
// interrupted while it runs), and kerbside never asks for that one.
import { createReadStream, writeSync } from "node:fs";
import { loadMicroPython } from "@micropython/micropython-webassembly-pyscript";

const args = process.argv.slice(2);
let fd = -1;
let heap = 96 * 1024;
for (let i = 0; i < args.length; i++) {
  if (args[i] === "--fd") fd = parseInt(args[++i], 10);
  else if (args[i] === "--heap") heap = parseInt(args[++i], 10);
}
if (fd < 0) {
  process.stderr.write("usage: node device.mjs --fd N [--heap BYTES]\n");
  process.exit(2);
}

function send(bytes) {
  let off = 0;
  while (off < bytes.length) {
    try {
      off += writeSync(fd, bytes, off, bytes.length - off);
    } catch (e) {
      if (e.code !== "EAGAIN") throw e;
    }
  }
}

const PYEXEC_FORCED_EXIT = 0x100;
const SKIP = new Set(["/dev", "/proc", "/tmp", "/home"]);
let muted = false;
const out = (bytes) => {
  if (!muted) send(bytes);
};

async function boot() {
  return loadMicroPython({ heapsize: heap, stdout: out, stderr: out, linebuffer: false });
}

// Every file and directory the firmware wrote: what survives a reset on a board's flash.
function snapshot(FS, dir = "/", files = []) {
  for (const name of FS.readdir(dir)) {
    if (name === "." || name === "..") continue;
    const path = dir === "/" ? `/${name}` : `${dir}/${name}`;
    if (SKIP.has(path)) continue;
    if (FS.isDir(FS.stat(path).mode)) {
      files.push([path, null]);
      snapshot(FS, path, files);
    } else {
      files.push([path, FS.readFile(path)]);
    }
  }
  return files;
}

function restore(FS, files) {
  for (const [path, data] of files) {
    if (data === null) {
      try {
        FS.mkdir(path);
      } catch (e) {
        // exists already in a fresh VM (/lib)
      }
    } else {
      FS.writeFile(path, data);
    }
  }
}

let mp = await boot();
mp.replInit();
let pending = [];
let resetting = false;
let raw = false;

async function softReset() {
  resetting = true;
  const files = snapshot(mp.FS);
  send(Buffer.from("MPY: soft reboot\r\n"));
  mp = await boot();
  restore(mp.FS, files);
  if (files.some(([path]) => path === "/boot.py")) {
    try {
      mp.runPython("exec(open('/boot.py').read())");
    } catch (e) {
      send(Buffer.from(String(e).replace(/\n/g, "\r\n") + "\r\n"));
    }
  }
  if (raw) {
    muted = true; // the friendly banner and prompt: a board in raw mode does not print them
    mp.replInit();
    mp.replProcessChar(1);
    muted = false;
    send(Buffer.from("raw REPL; CTRL-B to exit\r\n>"));
  } else {
    mp.replInit();
  }
  resetting = false;
  feed([]);
}

function feed(chunk) {
  pending.push(...chunk);
  while (pending.length && !resetting) {
    const c = pending.shift();
    if (c === 1) raw = true; // Ctrl-A: raw REPL
    else if (c === 2) raw = false; // Ctrl-B: friendly REPL
    if (mp.replProcessChar(c) & PYEXEC_FORCED_EXIT) {
      softReset(); // input arriving meanwhile waits in `pending`, as in a UART buffer
      return;
    }
  }
}

const input = createReadStream(null, { fd, autoClose: false, highWaterMark: 4096 });
input.on("data", (chunk) => feed(chunk));
input.on("error", (e) => {
  // EIO: the other side of the pty closed for good.
  if (e.code !== "EIO") process.stderr.write(String(e) + "\n");
  process.exit(0);
});
