// Browser test (serve stage): opens the allscan page in headless Debian chromium through
// playwright-core, uploads an image through the file picker, and checks that the prediction
// and the Grad-CAM overlay appear. Input: argv[2] = page URL, argv[3] = image, argv[4] =
// screenshot path. Output: exit 0 and the screenshot, or exit 1 with the reason.
import { chromium } from "playwright-core";
// (playwright gives the browser a fresh temporary profile itself; --user-data-dir is refused.)

const [url, image, shot] = process.argv.slice(2);
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  headless: true,
  args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"],
});
let failed = null;
try {
  const page = await browser.newPage({ viewport: { width: 1200, height: 900 } });
  page.on("console", m => console.log(`[page] ${m.text()}`));
  await page.goto(url);
  const notice = await page.textContent("#notice");
  if (!/research use only, not a diagnostic device/i.test(notice || "")) throw new Error(`notice missing: ${notice}`);
  await page.setInputFiles("#files", image);
  await page.waitForSelector(".result .prediction", { timeout: 60000 });
  const prediction = await page.textContent(".result .prediction");
  if (!/Prediction: (leukemia|healthy)/.test(prediction || "")) throw new Error(`unexpected prediction text: ${prediction}`);
  // The overlay must be a loaded image, not a broken one.
  await page.waitForFunction(() => { const i = document.querySelector(".result img.overlay"); return i && i.complete && i.naturalWidth > 0; }, null, { timeout: 30000 });
  const size = await page.evaluate(() => { const i = document.querySelector(".result img.overlay"); return [i.naturalWidth, i.naturalHeight]; });
  const rows = await page.$$eval(".result table tr", r => r.length);
  console.log(`browser test: ${prediction.trim()}; overlay ${size[0]}x${size[1]}; ${rows - 1} probability rows`);
  await page.screenshot({ path: shot, fullPage: true });
} catch (e) {
  failed = e;
}
await browser.close();
if (failed) { console.error(`browser test FAILED: ${failed.message}`); process.exit(1); }
