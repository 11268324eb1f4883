// Builds the visitor page into dist/: one bundled script, the stylesheet,
// the page, and the crypto's WebAssembly where the bundle looks for it
// (pkg/, next to app.js). No source maps: the page is served as built.
import { build } from "esbuild";
import { cpSync, mkdirSync, rmSync } from "node:fs";
import { createRequire } from "node:module";
import { dirname, join } from "node:path";

const out = "dist";
rmSync(out, { recursive: true, force: true });
mkdirSync(join(out, "pkg"), { recursive: true });

await build({
  entryPoints: ["src/app.js"],
  outfile: join(out, "app.js"),
  bundle: true,
  format: "esm",
  platform: "browser",
  target: ["es2022"],
  minify: true,
  legalComments: "linked",
  logLevel: "warning",
});

cpSync("src/index.html", join(out, "index.html"));
cpSync("src/app.css", join(out, "app.css"));
const require = createRequire(import.meta.url);
const wasmDir = join(dirname(require.resolve("@matrix-org/matrix-sdk-crypto-wasm")), "pkg");
cpSync(join(wasmDir, "matrix_sdk_crypto_wasm_bg.wasm"), join(out, "pkg", "matrix_sdk_crypto_wasm_bg.wasm"));
console.log("built web/dist");
