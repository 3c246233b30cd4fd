// Browser test (serve stage): opens the allscan page in headless Debian chromium through
// playwright-core and drives both tools of the page.
// 1. Single image: uploads an image through the file picker; the prediction and the Grad-CAM
//    overlay must appear.
// 2. Slide review: uploads 3 fields as one slide, waits for the gallery, re-classifies one cell
//    with a click and one with the keyboard, exports the reviewed slide (JSON and CSV) and checks
//    the exported files and the updated counts against the server's report; presses g on a cell
//    and checks its Grad-CAM overlay arrives. While the slide is uploaded and processed, the
//    main thread's responsiveness is recorded (PerformanceObserver 'longtask' and the gaps
//    between requestAnimationFrame callbacks) and printed.
// Input: argv[2] = page URL, argv[3] = image, argv[4] = output folder, argv[5..] = slide fields.
// Bench mode (scripts/bench-slide.sh): argv[2] = "--bench", argv[3] = page URL, argv[4] = output
// folder, argv[5..] = the fields of one slide: uploads them, waits until every cell is in the
// gallery, prints the seconds and the responsiveness figures, and writes bench-page.json.
// Output: exit 0 with screenshots and exports in the output folder, or exit 1 with the reason.
import { chromium } from "playwright-core";
import { readFileSync, writeFileSync } from "node:fs";
import { basename, join } from "node:path";
// (playwright gives the browser a fresh temporary profile itself; --user-data-dir is refused.)

const bench = process.argv[2] === "--bench";
const [url, image, out, ...fields] = bench
  ? [process.argv[3], null, process.argv[4], ...process.argv.slice(5)]
  : process.argv.slice(2);
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  headless: true,
  args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"],
});
const check = (ok, what) => { if (!ok) throw new Error(what); };
// Starts recording main-thread blocking in the page: long tasks (> 50 ms, as Chromium reports
// them) and the gaps between animation frames (a frame gap is how long the page could not paint).
const startWatch = page => page.evaluate(() => {
  const w = window.__watch = { longtasks: [], maxGap: 0, frames: 0, run: true };
  new PerformanceObserver(l => { for (const e of l.getEntries()) w.longtasks.push(e.duration); }).observe({ type: "longtask", buffered: false });
  let last = performance.now();
  const tick = t => { w.maxGap = Math.max(w.maxGap, t - last); last = t; w.frames++; if (w.run) requestAnimationFrame(tick); };
  requestAnimationFrame(tick);
});
const stopWatch = async page => {
  await page.waitForTimeout(100); // the last long task's entry is delivered after it ends
  return page.evaluate(() => {
    const w = window.__watch; w.run = false;
    return { longest_task_ms: Math.round(Math.max(0, ...w.longtasks)), long_tasks: w.longtasks.length,
             long_task_total_ms: Math.round(w.longtasks.reduce((a, b) => a + b, 0)), longest_frame_gap_ms: Math.round(w.maxGap), frames: w.frames };
  });
};
const watchText = r => `longest main-thread block ${r.longest_task_ms} ms, ${r.long_tasks} long task(s) > 50 ms ` +
  `(${r.long_task_total_ms} ms in all), longest gap between frames ${r.longest_frame_gap_ms} ms over ${r.frames} frames`;
let failed = null;
try {
  const page = await browser.newPage({ viewport: { width: 1200, height: 900 }, acceptDownloads: true });
  page.on("console", m => console.log(`[page] ${m.text()}`));
  await page.goto(url);
  if (bench) {
    // ---- bench: one large slide through the page
    await startWatch(page);
    const t0 = Date.now();
    await page.setInputFiles("#slide-files", fields);
    await page.waitForFunction(() => /^(Done|Request failed)/.test(document.getElementById("slide-progress-text").textContent), null, { timeout: 600000 });
    const status = await page.textContent("#slide-progress-text");
    check(/^Done/.test(status), status);
    const n = await page.evaluate(() => slide.counts.cells_found);
    await page.waitForFunction(n => document.querySelectorAll("#gallery .gcell").length === n, n, { timeout: 60000 });
    const secs = (Date.now() - t0) / 1000;
    const w = await stopWatch(page);
    // Responsiveness of a correction on the full gallery: one key press, timed to the next frame.
    await page.click("#gallery .gcell figcaption");
    const keyMs = await page.evaluate(() => new Promise(res => {
      const t = performance.now();
      document.dispatchEvent(new KeyboardEvent("keydown", { key: "u" }));
      requestAnimationFrame(() => res(Math.round(performance.now() - t)));
    }));
    await page.screenshot({ path: join(out, "bench-page.png") });
    const result = { fields: fields.length, cells: n, seconds: secs, relabel_to_frame_ms: keyMs, ...w };
    writeFileSync(join(out, "bench-page.json"), JSON.stringify(result, null, 2));
    console.log(`page: slide of ${fields.length} fields, ${n} cells shown in ${secs.toFixed(1)} s; ${watchText(w)}; one correction on the full gallery: ${keyMs} ms to the next frame`);
    await browser.close();
    process.exit(0);
  }
  const notice = await page.textContent("#notice");
  check(/research use only, not a diagnostic device/i.test(notice || ""), `notice missing: ${notice}`);

  // ---- 1. single image
  await page.setInputFiles("#files", image);
  await page.waitForSelector(".result .prediction", { timeout: 60000 });
  const prediction = await page.textContent(".result .prediction");
  check(/Prediction: (leukemia|healthy)/.test(prediction || ""), `unexpected prediction text: ${prediction}`);
  // The overlay must be a loaded image, not a broken one.
  await page.waitForFunction(() => { const i = document.querySelector(".result img.overlay"); return i && i.complete && i.naturalWidth > 0; }, null, { timeout: 30000 });
  const size = await page.evaluate(() => { const i = document.querySelector(".result img.overlay"); return [i.naturalWidth, i.naturalHeight]; });
  const rows = await page.$$eval(".result table tr", r => r.length);
  console.log(`browser test: ${prediction.trim()}; overlay ${size[0]}x${size[1]}; ${rows - 1} probability rows`);
  await page.screenshot({ path: join(out, "page.png"), fullPage: true });

  // ---- 2. slide review
  check(fields.length === 3, `expected 3 slide fields, got ${fields.length}`);
  const answers = [];
  page.on("response", async r => { if (r.url().includes("/api/slide")) answers.push(await r.json()); });
  await startWatch(page);
  await page.setInputFiles("#slide-files", fields);
  await page.waitForFunction(() => /^Done/.test(document.getElementById("slide-progress-text").textContent), null, { timeout: 120000 });
  for (let t = 0; t < 50 && answers.length === 0; t++) await page.waitForTimeout(100);
  check(answers.length === 1, `3 fields go in one request, saw ${answers.length}`);
  const server = answers[0];
  const nCells = server.counts.cells_found;
  check(nCells >= 2, `need at least 2 cells to review, the server found ${nCells}`);
  await page.waitForFunction(n => document.querySelectorAll("#gallery .gcell").length === n, nCells, { timeout: 10000 });
  const watch = await stopWatch(page);
  console.log(`browser test: while the slide was processed: ${watchText(watch)}`);
  // Gallery crops are drawn (from bitmaps decoded off the main thread), not left blank.
  await page.waitForFunction(() => {
    const cv = document.querySelector("#gallery .gcell canvas");
    const d = cv.getContext("2d").getImageData(0, 0, 96, 96).data;
    for (let i = 3; i < d.length; i += 4) if (d[i] !== 0) return true;
    return false;
  }, null, { timeout: 10000 });
  check(await page.$$eval(".fieldwrap rect", r => r.length) === nCells, "every cell boxed on its field");
  const count = async k => (await page.textContent(`#slide-counts [data-k="${k}"]`)).trim();
  const pct = x => (100 * x).toFixed(1) + "%";
  // The page's figures are the server's report.
  for (const k of ["fields", "cells_found", "white_cells", "blasts", "excluded"]) {
    check(await count(k) === String(server.counts[k]), `${k}: page ${await count(k)}, server ${server.counts[k]}`);
  }
  check(await count("blast_fraction") === pct(server.counts.blast_fraction), "blast fraction differs from the server");
  check(await page.getAttribute("#slide-call", "data-v") === server.call, "call differs from the server");
  // The gallery is sorted by suspicion.
  const ps = await page.$$eval("#gallery .gcell", e => e.map(x => [x.dataset.id, Number(x.dataset.p), x.parentElement.dataset.group]));
  for (const g of new Set(ps.map(p => p[2]))) {
    const inG = ps.filter(p => p[2] === g).map(p => p[1]);
    check(inG.every((p, i) => i === 0 || inG[i - 1] >= p), `group ${g} not sorted by p(blast)`);
  }
  await page.screenshot({ path: join(out, "slide.png"), fullPage: true });

  const cells = server.fields.flatMap(f => f.cells);
  const byId = id => cells.find(c => c.id === id);
  const [a, b] = ps.slice(0, 2).map(p => byId(p[0]));
  // Cell a by a click on its button: blast -> not blast, anything else -> blast.
  const aLabel = a.status === "blast" ? "not_blast" : "blast";
  await page.click(`.gcell[data-id="${a.id}"] button[data-label="${aLabel}"]`);
  // Cell b by selecting it with a click and pressing x (not a cell).
  await page.click(`.gcell[data-id="${b.id}"] figcaption`);
  await page.keyboard.press("x");
  const counted = s => s === "blast" || s === "not_blast";
  const want = { ...server.counts };
  want.white_cells += (counted(aLabel) - counted(a.status)) - counted(b.status);
  want.blasts += ((aLabel === "blast") - (a.status === "blast")) - (b.status === "blast");
  want.excluded -= (a.status === "excluded") + (b.status === "excluded");
  want.not_a_cell += 1; want.reviewed += 2;
  for (const k of ["white_cells", "blasts", "excluded", "not_a_cell", "reviewed"]) {
    check(await count(k) === String(want[k]), `after review ${k}: page ${await count(k)}, expected ${want[k]}`);
  }
  const frac = want.white_cells ? want.blasts / want.white_cells : 0;
  check(await count("blast_fraction") === pct(frac), `blast fraction after review: ${await count("blast_fraction")} vs ${pct(frac)}`);
  check(await page.getAttribute(`.gcell[data-id="${a.id}"]`, "class").then(c => c.includes(aLabel)), "cell a did not move");
  check(await page.$eval(`.gcell[data-id="${b.id}"]`, e => e.parentElement.dataset.group) === "not_a_cell", "cell b not in 'not a cell'");
  check(await page.getAttribute(`rect[data-id="${b.id}"]`, "class").then(c => c.includes("not_a_cell")), "box of b not recoloured");
  // Grad-CAM of the selected cell (b) with the g key: an overlay from /api/explain-cell.
  const camReq = page.waitForRequest(r => r.url().includes(`/api/explain-cell?cell=`));
  await page.keyboard.press("g");
  const req = await camReq;
  const bField = server.fields[b.field];
  check(req.url().endsWith(`cell=${bField.cells.findIndex(c => c.id === b.id)}`), `explain-cell asked for ${req.url()}`);
  await page.waitForFunction(id => { const i = document.getElementById("cam-img"); return !i.hidden && i.dataset.id === id && i.complete && i.naturalWidth > 0; }, b.id, { timeout: 60000 });
  const camSize = await page.evaluate(() => { const i = document.getElementById("cam-img"); return [i.naturalWidth, i.naturalHeight]; });
  check(camSize[0] === 192 && camSize[1] === 192, `Grad-CAM overlay is ${camSize}`);
  const camText = await page.textContent("#cam-text");
  check(camText.includes(`p(blast) ${b.p_blast.toFixed(3)}`), `Grad-CAM p differs from the slide's: ${camText}`);
  console.log(`browser test: Grad-CAM of ${b.id} shown (${camSize[0]}x${camSize[1]}), ${camText.split(";")[0]}`);
  await page.screenshot({ path: join(out, "slide-reviewed.png"), fullPage: true });

  // Export, and read the files back.
  const [dj] = await Promise.all([page.waitForEvent("download"), page.click("#export-json")]);
  const jsonText = readFileSync(await dj.path(), "utf8");
  writeFileSync(join(out, "export.json"), jsonText);
  const ex = JSON.parse(jsonText);
  check(ex.format === "allscan-slide/1" && ex.fields.length === 3, "export is not the slide");
  check(JSON.stringify(ex.fields.map(f => f.name)) === JSON.stringify(fields.map(f => basename(f))), "export names are not the uploaded names");
  for (const k of ["white_cells", "blasts", "not_a_cell", "reviewed"]) check(ex.counts[k] === want[k], `export ${k}: ${ex.counts[k]} vs ${want[k]}`);
  const exCells = ex.fields.flatMap(f => f.cells);
  check(exCells.find(c => c.id === a.id).review === aLabel && exCells.find(c => c.id === b.id).review === "not_a_cell", "export lacks the reviews");
  check(exCells.filter(c => c.review).length === 2, "export has other reviews");
  check(!/\/(tmp|work|home|root)\//.test(jsonText) && !jsonText.includes(process.cwd()), "export contains a machine path");
  const [dc] = await Promise.all([page.waitForEvent("download"), page.click("#export-csv")]);
  const csv = readFileSync(await dc.path(), "utf8");
  writeFileSync(join(out, "export.csv"), csv);
  const lines = csv.trim().split("\n");
  check(lines[0].startsWith("field,cell_id,x,y,width,height,p_blast,model_call,flags,review,status,counted"), `csv header: ${lines[0]}`);
  check(lines.length === nCells + 1, `csv rows ${lines.length - 1} vs ${nCells} cells`);
  check(lines.some(l => l.includes(`,${b.id},`) && l.includes(",not_a_cell,not_a_cell,false")), "csv row of b");
  console.log(`browser test: slide of 3 fields, ${nCells} cells; reviewed ${a.id} -> ${aLabel} (click), ${b.id} -> not_a_cell (key); ` +
    `white cells ${server.counts.white_cells} -> ${want.white_cells}, blasts ${server.counts.blasts} -> ${want.blasts}; exports checked`);
} catch (e) {
  failed = e;
}
await browser.close();
if (failed) { console.error(`browser test FAILED: ${failed.message}`); process.exit(1); }
