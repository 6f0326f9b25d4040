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

const mp = await loadMicroPython({ heapsize: heap, stdout: send, stderr: send, linebuffer: false });
mp.replInit();

const input = createReadStream(null, { fd, autoClose: false, highWaterMark: 4096 });
input.on("data", (chunk) => {
  // A soft reset request (Ctrl-D on an empty raw-REPL line) is not emulated:
  // the VM cannot restart in place. kerbside's client never sends one.
  for (const c of chunk) mp.replProcessChar(c);
});
input.on("error", (e) => {
  // EIO: the other side of the pty closed for good.
  if (e.code !== "EIO") process.stderr.write(String(e) + "\n");
  process.exit(0);
});
