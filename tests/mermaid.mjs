// Render every ```mermaid block of markdown files with mermaid from npm, as GitHub does,
// in jsdom (no browser), and print what was drawn as JSON, one line a block:
//   node tests/mermaid.mjs <path to node_modules> <file.md>...
//   {"file": ..., "block": 0, "error": null, "lines": [{"stroke": "#1f77b4", "points": 3, "nan": false}, ...]}
// Exits 1 when a block fails to parse or render. jsdom lays nothing out, so text boxes get
// a size from their character count: positions are rough, the drawing's structure is real.
import fs from "fs";
import path from "path";
import { pathToFileURL } from "url";

const modules = process.argv[2];
const { JSDOM } = await import(pathToFileURL(path.join(modules, "jsdom", "lib", "api.js")));
const dom = new JSDOM("<!DOCTYPE html><body></body>", { pretendToBeVisual: true });
for (const name of ["window", "document", "navigator", "CSSStyleSheet", "Element", "HTMLElement", "SVGElement",
                    "Node", "DOMParser", "XMLSerializer", "MutationObserver", "getComputedStyle"]) {
  if (!(name in globalThis)) globalThis[name] = name === "window" ? dom.window : dom.window[name];
}
const textWidth = (el) => 7 * (el.textContent || "").length;
dom.window.SVGElement.prototype.getBBox = function () { return { x: 0, y: 0, width: textWidth(this), height: 14 }; };
dom.window.SVGElement.prototype.getComputedTextLength = function () { return textWidth(this); };

const mermaid = (await import(pathToFileURL(path.join(modules, "mermaid", "dist", "mermaid.core.mjs")))).default;
mermaid.initialize({ startOnLoad: false });

let failed = false;
let id = 0;
for (const file of process.argv.slice(3)) {
  const blocks = [...fs.readFileSync(file, "utf8").matchAll(/^```mermaid\n([\s\S]*?)^```$/gm)].map((m) => m[1]);
  for (const [block, text] of blocks.entries()) {
    const result = { file, block, error: null, lines: [] };
    try {
      const { svg } = await mermaid.render(`chart${id++}`, text);
      const doc = new dom.window.DOMParser().parseFromString(svg, "image/svg+xml");
      // xychart draws line plot i as <g class="line-plot-i"><path d="M..L.." stroke=...>.
      for (const group of doc.querySelectorAll("g[class^='line-plot-']")) {
        const d = group.querySelector("path").getAttribute("d");
        result.lines.push({
          stroke: group.querySelector("path").getAttribute("stroke"),
          points: (d.match(/[ML]/g) || []).length,
          nan: d.includes("NaN"),
        });
      }
    } catch (error) {
      result.error = String(error && error.message ? error.message : error);
      failed = true;
    }
    console.log(JSON.stringify(result));
  }
}
process.exit(failed ? 1 : 0);
