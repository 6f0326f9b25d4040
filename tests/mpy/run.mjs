// Run a MicroPython script under the real MicroPython VM (WebAssembly port).
//
// usage: node run.mjs [--heap BYTES] [--lib DIR]... [--file HOSTPATH=VMPATH]... [--flash HOSTDIR=VMDIR]
//                     [--net] [--window BYTES] SCRIPT.py
//
// Each --lib DIR is copied, recursively, to /lib/<basename DIR> in the VM's
// file system, the way the firmware sits on a node's flash. The script's
// stdout goes to stdout. On exit a line "KS_HEAP total=N used=N" goes to
// stderr (initial is the heap before the script): the port grows its heap in splits when a collection cannot satisfy
// an allocation, so total > initial means the script would have raised
// MemoryError on a device with that much heap. Exit status 1 on an uncaught
// Python exception (its traceback on stderr), 0 otherwise.
// --flash and --net: the VM's flash and TCP bridge for running a whole node (bridge.mjs).
import { readFileSync, readdirSync, statSync } from "node:fs";
import { basename, join } from "node:path";
import { loadMicroPython } from "@micropython/micropython-webassembly-pyscript";
import { installFlash, installNet } from "./bridge.mjs";

const args = process.argv.slice(2);
let heap = 65536;
const libs = [];
const files = [];
const flashes = [];
let useNet = false;
let window = 0;
let script = null;
for (let i = 0; i < args.length; i++) {
  if (args[i] === "--heap") heap = parseInt(args[++i], 10);
  else if (args[i] === "--lib") libs.push(args[++i]);
  else if (args[i] === "--file") files.push(args[++i]);
  else if (args[i] === "--flash") flashes.push(args[++i]);
  else if (args[i] === "--net") useNet = true;
  else if (args[i] === "--window") window = parseInt(args[++i], 10);
  else script = args[i];
}
if (!script) {
  process.stderr.write("usage: node run.mjs [--heap BYTES] [--lib DIR]... SCRIPT.py\n");
  process.exit(2);
}

let capture = null;
const mp = await loadMicroPython({
  heapsize: heap,
  stdout: (line) => (capture ? capture.push(line) : process.stdout.write(line + "\n")),
  stderr: (line) => process.stderr.write(line + "\n"),
});

function mkdirp(path) {
  let cur = "";
  for (const part of path.split("/").filter(Boolean)) {
    cur += "/" + part;
    try { mp.FS.mkdir(cur); } catch (e) { /* exists */ }
  }
}
function copyTree(src, dst) {
  mkdirp(dst);
  for (const name of readdirSync(src)) {
    if (name === "__pycache__") continue;
    const s = join(src, name);
    if (statSync(s).isDirectory()) copyTree(s, dst + "/" + name);
    else mp.FS.writeFile(dst + "/" + name, readFileSync(s));
  }
}
for (const lib of libs) copyTree(lib, "/lib/" + basename(lib));
for (const spec of files) {
  const [host, vm] = spec.split("=");
  mkdirp(vm.split("/").slice(0, -1).join("/"));
  mp.FS.writeFile(vm, readFileSync(host));
}

for (const spec of flashes) {
  const [host, vm] = spec.split("=");
  installFlash(mp, host, vm);
}
if (useNet) installNet(mp, { window });

function gcInfo() {
  capture = [];
  mp.runPython("import micropython\nmicropython.mem_info()");
  const m = capture.join("\n").match(/GC: total: (\d+), used: (\d+)/);
  capture = null;
  return m ? [m[1], m[2]] : [-1, -1];
}
const [initial] = gcInfo();

let status = 0;
try {
  await mp.runPythonAsync(readFileSync(script, "utf8"));
} catch (e) {
  process.stderr.write(String(e.message || e) + "\n");
  status = 1;
}
const [total, used] = gcInfo();
process.stderr.write(`KS_HEAP initial=${initial} total=${total} used=${used}\n`);
process.exitCode = status;
if (useNet) process.exit(status); // open sockets would keep node running
