// Runs Python test modules under real MicroPython 1.27 (WebAssembly port) and prints one JSON line of results.
//
// usage: node runner.mjs --root REPO --module tests/protocols/test_x.py [--module ...] [--code "python"]
//        [--lib DIR]   copy DIR (e.g. a tree of .mpy built by mpy-cross) to /lib instead of the sources
//
// The repo's protocols/ and firmware/ trees and tests/support/ are copied into the MicroPython VFS under /lib,
// so test code imports them exactly as on a device. Test functions may be plain or `async def`; async ones are
// awaited through runPythonAsync because this port's asyncio has no asyncio.run().
import { loadMicroPython } from "@micropython/micropython-webassembly-pyscript";
import fs from "node:fs";
import path from "node:path";

const args = process.argv.slice(2);
let root = ".";
const modules = [];
const codes = [];
let libDir = null;
for (let i = 0; i < args.length; i++) {
  if (args[i] === "--root") root = args[++i];
  else if (args[i] === "--module") modules.push(args[++i]);
  else if (args[i] === "--code") codes.push(args[++i]);
  else if (args[i] === "--lib") libDir = args[++i];
}

const out = [];
const mp = await loadMicroPython({
  heapsize: 8 * 1024 * 1024,
  stdout: (line) => out.push(line),
  stderr: (line) => out.push(line),
  linebuffer: true,
});

function copyTree(src, dst) {
  if (!fs.existsSync(src)) return;
  mp.FS.mkdirTree(dst);
  for (const entry of fs.readdirSync(src, { withFileTypes: true })) {
    if (entry.name === "__pycache__" || entry.name.startsWith(".")) continue;
    const s = path.join(src, entry.name);
    const d = dst + "/" + entry.name;
    if (entry.isDirectory()) copyTree(s, d);
    else if (/\.(py|mpy|json)$/.test(entry.name)) mp.FS.writeFile(d, fs.readFileSync(s));
  }
}

if (libDir) {
  copyTree(libDir, "/lib");
} else {
  copyTree(path.join(root, "protocols"), "/lib/protocols");
  copyTree(path.join(root, "firmware"), "/lib/firmware");
  // firmware/lib holds modules that sit at the top of /lib on a device (e.g. lookout_node).
  copyTree(path.join(root, "firmware", "lib"), "/lib");
}
copyTree(path.join(root, "tests", "support"), "/lib");
mp.FS.mkdirTree("/tests");
for (const m of modules) mp.FS.writeFile("/tests/" + path.basename(m), fs.readFileSync(path.join(root, m)));

const driver = `
import sys, gc, json
sys.path.append("/tests")
_results = {"passed": [], "failed": [], "implementation": sys.implementation.name}
async def _run_module(modname):
    try:
        mod = __import__(modname)
    except Exception as e:
        _results["failed"].append({"name": modname + ":<import>", "error": "%s: %s" % (type(e).__name__, e)})
        return
    names = sorted(n for n in dir(mod) if n.startswith("test_"))
    for n in names:
        fn = getattr(mod, n)
        if not callable(fn):
            continue
        try:
            r = fn()
            if r is not None and hasattr(r, "send"):
                await r
            _results["passed"].append(modname + "::" + n)
        except Exception as e:
            sys.print_exception(e)
            _results["failed"].append({"name": modname + "::" + n, "error": "%s: %s" % (type(e).__name__, e)})
        gc.collect()
`;

let error = null;
try {
  mp.runPython(driver);
  for (const m of modules) {
    const name = path.basename(m).replace(/\.py$/, "");
    await mp.runPythonAsync(`await _run_module(${JSON.stringify(name)})`);
  }
  for (const c of codes) await mp.runPythonAsync(c);
  mp.runPython(`print("@@RESULT@@" + json.dumps(_results))`);
} catch (e) {
  error = String(e);
}
for (const line of out) process.stdout.write(line + (line.endsWith("\n") ? "" : "\n"));
if (error) {
  process.stdout.write("@@ERROR@@" + JSON.stringify({ error }) + "\n");
  process.exit(1);
}
