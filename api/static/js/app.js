// The dashboard: one Alpine.js component over Graft's API (js/api.js), routed by the URL's #hash. Alpine is its CSP
// build (no eval): the page's expressions are property paths, calls and simple operators; the rest lives here.
"use strict";

const FINISHED = ["succeeded", "failed", "cancelled"];
const POLL_MS = 1500;
const MAIN_TRAIN_FIELDS = ["dataset_id", "model_name", "backbone", "mode", "time_budget_s", "epochs"];
const charts = {};  // Chart.js objects live outside Alpine's reactive proxies

// The phases before the first epoch (worker/train_runner.py), as the page words them.
const PREPARING = { loading: "reading images", caching: "computing features" };
const UNKNOWN = "unknown";  // the label of a rejected image (shared/params.py:UNKNOWN)
// Ready-to-run ways to call a model from outside the dashboard: the same endpoint, client method and CLI command
// the README documents (the browser test runs the curl and Python ones against the live server).
function useSnippets(model) {
  const origin = window.location.origin;
  return [
    { id: "curl", name: "curl", code:
      `curl -s -X POST "${origin}/api/v1/models/${model.id}/predict" \\\n  -H "Authorization: Bearer $GRAFT_TOKEN" -F "file=@photo.jpg"` },
    { id: "python", name: "Python", code:
      `import os\nfrom graft.client import Client\n\nclient = Client("${origin}", os.environ["GRAFT_TOKEN"])\n` +
      `print(client.predict_now("${model.id}", ["photo.jpg"])["items"][0]["label"])` },
    { id: "cli", name: "CLI (a folder)", code:
      `GRAFT_URL=${origin} graft predict ${model.id} photos/ -o predictions.csv` },
    { id: "onnx", name: "ONNX bundle", code:
      `GRAFT_URL=${origin} graft models download ${model.id} --format onnx -o model.zip` },
  ];
}

function pct(x) { return x === null || x === undefined ? "–" : `${(100 * x).toFixed(1)}%`; }
// A model's one accuracy, worded as graft.shared.accuracy.describe words it for the CLI.
function accuracyText(a) {
  if (!a) return "–";
  const how = a.source === "holdout"
    ? `holdout${a.images ? `, ${a.images} validation images` : ""}`
    : `k-fold cross-validation${a.images ? ` over ${a.images} images` : ""}`;
  return `${pct(a.value)} (${how}; kept the ${a.kept})`;
}
function when(iso) { return iso ? new Date(iso).toLocaleString() : "–"; }
function eta(s) {
  if (s === null || s === undefined) return "–";
  return s >= 90 ? `${Math.round(s / 60)} min` : `${Math.round(s)} s`;
}

function lineChart(canvas, title, history, keys) {
  const colors = { train: "#1d4ed8", val: "#b45309" };
  const data = {
    labels: history.map((h) => h.epoch),
    datasets: keys.map((k) => ({
      label: k.replace("_", " "), data: history.map((h) => h[k]), borderColor: colors[k.split("_")[0]],
      backgroundColor: colors[k.split("_")[0]], tension: 0.2,
    })),
  };
  if (charts[title] && charts[title].canvas === canvas) {
    charts[title].data = data;
    charts[title].update("none");
    return;
  }
  if (charts[title]) charts[title].destroy();
  charts[title] = new Chart(canvas, {
    type: "line", data,
    options: {
      animation: false, responsive: true, maintainAspectRatio: false,
      plugins: { title: { display: true, text: title } },
      scales: { x: { title: { display: true, text: "epoch" } } },
    },
  });
}

document.addEventListener("alpine:init", () => {
  Alpine.data("dashboard", () => ({
    token: graftApi.token(),
    tokenInput: "",
    signinError: "",
    route: { page: "datasets", id: null, params: {} },
    notice: "",
    noticeAt: 0,
    error: "",
    spec: null,
    // datasets
    datasets: [], dataset: null, upload: { progress: null, busy: false, name: "", dragging: false },
    // training
    trainFields: [], trainValues: {}, trainErrors: {}, readyDatasets: [],
    // jobs
    jobs: [], triesOnly: false, job: null, events: [], logs: [], historyLength: -1,
    // models
    models: [], model: null, cell: null, gallery: [], galleryInfo: null, exportFormats: [], exportFormat: "onnx",
    tryResults: [], tryBusy: false, tryDragging: false, exportBusy: false,
    // batch predict
    predict: { modelId: "", source: "upload", inputDir: "", items: [], progress: null, busy: false, dragging: false },
    results: [], resultsSummary: {}, resultsNext: null, resultFilter: "all",

    init() {
      graftApi.onUnauthorized = () => { this.logout("Your token was refused: sign in again."); };
      window.addEventListener("hashchange", () => this.go());
      this.go();
      setInterval(() => this.poll(), POLL_MS);
    },

    pct, accuracyText, useSnippets, when, eta,

    // ---- what the page's expressions need beyond property paths and calls (Alpine's CSP build parses them itself:
    // no template literals, arrow functions, `??` or globals in index.html) -----------------------------------------
    concat(...parts) { return parts.map((p) => (p === null || p === undefined ? "" : String(p))).join(""); },
    dash(value) { return value ?? "–"; },
    image(el, url) { graftApi.image(el, url); },
    pickedFiles(files) { return graftApi.pickedFiles(files); },
    barStyle(top) { return { width: `${100 * top.confidence}%` }; },
    conversionRows() { return Object.entries(this.dataset.conversions || {}).filter(([_k, v]) => v); },
    mainTrainFields() { return this.trainFields.filter((f) => f.main); },
    advancedTrainFields() { return this.trainFields.filter((f) => !f.main); },
    // What the job is doing now, as the CLI counts it: images before the first epoch, epochs after it.
    progressText(job) {
      const p = job.progress;
      if (PREPARING[p.phase] && p.total) return `${PREPARING[p.phase]} ${p.done}/${p.total}`;
      if (p.phase === "done" && p.epochs && p.epoch < p.epochs) {
        return `done · ${p.epoch} of ${p.epochs} epochs (stopped early)`;
      }
      return `${pct(p.fraction || 0)} · epoch ${p.epoch || 0}/${p.epochs ?? "?"} · ETA ${eta(p.eta_s)}`;
    },
    progressValue(job) {
      const p = job.progress;
      return PREPARING[p.phase] && p.total ? p.done / p.total : p.fraction || 0;
    },
    curveText() {
      return `${(this.job.metrics.history || []).length} epoch(s) recorded: the validation split's accuracy per epoch ` +
        "is a training curve, not the model's accuracy";
    },
    logLine(line) { return `${line.at.slice(11, 19)} ${line.level} ${line.message}\n`; },
    perClassRows() { return Object.entries(this.model.metrics.per_class || {}); },
    modelOption(m) { return `${m.name} · ${m.id.slice(0, 8)} · ${m.classes.join(", ")}`; },
    dropTry(event) {
      this.tryDragging = false;
      this.tryImages(event.dataTransfer.files);
    },

    say(text) { this.notice = text; this.noticeAt = Date.now(); },
    async copy(text) {
      try {
        await navigator.clipboard.writeText(text);
        this.say("Copied.");
      } catch {  // no clipboard (an insecure origin, a headless browser): the text stays selectable
        this.say("Copy failed: select the text instead.");
      }
    },

    // ---- sign in ---------------------------------------------------------------------------------------------
    async signIn() {
      this.signinError = "";
      graftApi.setToken(this.tokenInput.trim());
      try {
        await graftApi.get("/api/v1/jobs?limit=1");
        this.token = graftApi.token();
        this.tokenInput = "";
        this.go();
      } catch (err) {
        graftApi.clearToken();
        this.token = null;
        this.signinError = err.status === 401 ? "That token was refused." : err.message;
      }
    },

    logout(message) {
      graftApi.clearToken();
      this.token = null;
      this.signinError = typeof message === "string" ? message : "";
      Object.values(charts).forEach((c) => c.destroy());
      Object.keys(charts).forEach((k) => delete charts[k]);
    },

    // ---- routing ---------------------------------------------------------------------------------------------
    async go() {
      const [path, query] = (location.hash.replace(/^#\/?/, "") || "datasets").split("?");
      const [page, id] = path.split("/");
      this.route = { page, id: id ? decodeURIComponent(id) : null, params: Object.fromEntries(new URLSearchParams(query)) };
      this.error = "";
      if (Date.now() - this.noticeAt > 3000) this.notice = "";  // a notice outlives the move it announced, no more
      if (!this.token) return;
      try {
        await this.load();
      } catch (err) {
        this.error = err.message;
      }
      this.$nextTick(() => { const h = document.querySelector("main h1"); if (h) h.focus({ preventScroll: true }); });
    },

    async load() {
      const { page, id } = this.route;
      if (page === "datasets" && !id) await this.loadDatasets();
      if (page === "datasets" && id) await this.loadDataset(id);
      if (page === "train") await this.loadTrainForm();
      if (page === "jobs" && !id) await this.loadJobs();
      if (page === "jobs" && id) { this.job = null; this.historyLength = -1; await this.loadJob(id); }
      if (page === "models" && !id) await this.loadModels();
      if (page === "models" && id) await this.loadModel(id);
      if (page === "predict") await this.loadPredict(id);
    },

    async poll() {
      if (!this.token || document.hidden) return;
      const { page, id } = this.route;
      try {
        if (page === "jobs" && !id) await this.loadJobs();
        if (page === "jobs" && id && this.job && !FINISHED.includes(this.job.status)) await this.loadJob(id);
        if (page === "datasets" && id && this.dataset && this.dataset.status === "inspecting") await this.loadDataset(id);
        if (page === "datasets" && !id && this.datasets.some((d) => d.status === "inspecting")) await this.loadDatasets();
        if (page === "predict" && id && this.job && !FINISHED.includes(this.job.status)) await this.loadPredict(id);
      } catch (_err) { /* the next poll tries again */ }
    },

    async openApi() {
      if (!this.spec) this.spec = await (await fetch("/api/v1/openapi.json")).json();
      return this.spec;
    },

    // ---- datasets --------------------------------------------------------------------------------------------
    async loadDatasets() { this.datasets = (await graftApi.get("/api/v1/datasets?limit=100")).items; },

    async loadDataset(id) { this.dataset = await graftApi.get(`/api/v1/datasets/${encodeURIComponent(id)}`); },

    async sendDataset(items) {
      if (!items.length) return;
      this.error = "";
      this.upload.busy = true;
      this.upload.progress = 0;
      try {
        const top = items[0].path.split("/")[0];
        const file = await graftApi.archive(items, this.upload.name || top);
        const form = new FormData();
        form.append("file", file, file.name);
        if (this.upload.name) form.append("name", this.upload.name);
        const { body } = await graftApi.upload("/api/v1/datasets", form, (f) => { this.upload.progress = f; });
        this.say(`Dataset ${body.name} uploaded; inspecting it.`);
        location.hash = `#/datasets/${body.id}`;
      } catch (err) {
        this.error = err.message;
      } finally {
        this.upload.busy = false;
      }
    },

    async dropDataset(event) {
      this.upload.dragging = false;
      await this.sendDataset(await graftApi.droppedFiles(event.dataTransfer));
    },

    async deleteDataset() {
      if (!confirm(`Delete dataset ${this.dataset.name}?`)) return;
      try {
        await graftApi.call(`/api/v1/datasets/${this.dataset.id}`, { method: "DELETE" });
        this.say(`Dataset ${this.dataset.name} deleted.`);
        location.hash = "#/datasets";
      } catch (err) { this.error = err.message; }
    },

    classRows() {
      const d = this.dataset;
      if (!d || !d.classes) return [];
      return Object.entries(d.classes).map(([name, count]) => ({ name, count, thumbs: (d.thumbnails || {})[name] || [] }));
    },

    // ---- training form ---------------------------------------------------------------------------------------
    async loadTrainForm() {
      const spec = await this.openApi();
      const schema = spec.components.schemas.TrainRequest;
      this.readyDatasets = (await graftApi.get("/api/v1/datasets?limit=100")).items.filter((d) => d.status === "ready");
      this.trainFields = Object.entries(schema.properties).map(([name, p]) => ({
        name, label: name.replace(/_/g, " "), help: p.description || "", type: p.type, choices: p.enum || null,
        min: p.minimum, max: p.maximum, nullable: !!p.nullable, default: p.default,
        main: MAIN_TRAIN_FIELDS.includes(name),
      }));
      const values = {};
      for (const f of this.trainFields) {
        values[f.name] = f.default === null || f.default === undefined ? "" : f.default;
      }
      values.dataset_id = this.route.params.dataset || (this.readyDatasets[0] || {}).id || "";
      this.trainValues = values;
      this.trainErrors = {};
    },

    trainBody() {
      const body = {};
      for (const f of this.trainFields) {
        let v = this.trainValues[f.name];
        if (v === "" || v === null || v === undefined) continue;
        if (f.type === "integer") v = parseInt(v, 10);
        else if (f.type === "number") v = parseFloat(v);
        if (v === f.default) continue;
        body[f.name] = v;
      }
      return body;
    },

    async submitTrain() {
      this.error = "";
      this.trainErrors = {};
      try {
        const { body } = await graftApi.call("/api/v1/jobs/train", { method: "POST", json: this.trainBody() });
        this.say(`Training job ${body.id} queued.`);
        location.hash = `#/jobs/${body.id}`;
      } catch (err) {
        this.error = err.message;
        for (const e of err.fields || []) this.trainErrors[e.field] = e.message;
      }
    },

    // ---- jobs ------------------------------------------------------------------------------------------------
    // A model's "Try an image" calls are jobs too: the list leaves them out unless triesOnly asks for them.
    async loadJobs() {
      this.jobs = (await graftApi.get(`/api/v1/jobs?limit=50${this.triesOnly ? "&interactive=true" : ""}`)).items;
    },

    async loadJob(id) {
      const base = `/api/v1/jobs/${encodeURIComponent(id)}`;
      const [job, events] = await Promise.all([graftApi.get(base), graftApi.get(`${base}/events`)]);
      const after = this.logs.length && this.job && this.job.id === id ? this.logs[this.logs.length - 1].id : 0;
      if (!after) this.logs = [];
      const logs = await graftApi.get(`${base}/logs?after=${after}`);
      this.job = job;
      this.events = events.items;
      this.logs = this.logs.concat(logs.items);
      this.$nextTick(() => this.drawCurves());
    },

    drawCurves() {
      const history = (this.job && this.job.metrics.history) || [];
      const loss = document.getElementById("loss-chart");
      const acc = document.getElementById("acc-chart");
      if (!loss || !acc || (history.length === this.historyLength && charts.Loss && charts.Loss.canvas === loss)) return;
      this.historyLength = history.length;
      lineChart(loss, "Loss", history, ["train_loss", "val_loss"]);
      lineChart(acc, "Accuracy", history, ["train_acc", "val_acc"]);
    },

    async cancelJob() {
      try {
        const { body } = await graftApi.call(`/api/v1/jobs/${this.job.id}/cancel`, { method: "POST" });
        this.job = body;
        this.say(body.status === "cancelled" ? "Job cancelled." : "Cancel requested: the job stops at its next batch.");
      } catch (err) { this.error = err.message; }
    },

    jobLink(job) { return job.kind === "predict" ? `#/predict/${job.id}` : `#/jobs/${job.id}`; },

    // ---- models ----------------------------------------------------------------------------------------------
    async loadModels() { this.models = (await graftApi.get("/api/v1/models?limit=100")).items; },

    async loadModel(id) {
      const spec = await this.openApi();
      const download = spec.paths["/api/v1/models/{model_id}/download"].get.parameters.find((p) => p.name === "format");
      this.exportFormats = download.schema.enum;
      this.model = await graftApi.get(`/api/v1/models/${encodeURIComponent(id)}`);
      this.cell = null;
      this.gallery = [];
      this.tryResults = [];
    },

    matrix() {
      const m = this.model;
      if (!m || !m.metrics.confusion_matrix) return [];
      return m.metrics.confusion_matrix.map((row, i) => ({ name: m.classes[i], cells: row.map((n, j) => ({ n, predicted: m.classes[j], right: i === j })) }));
    },

    async openCell(trueClass, predicted) {
      this.cell = { true: trueClass, predicted };
      const q = new URLSearchParams({ true: trueClass, predicted, limit: "100" });
      try {
        const page = await graftApi.get(`/api/v1/models/${this.model.id}/predictions?${q}`);
        this.gallery = page.items;
        this.galleryInfo = page;
        this.$nextTick(() => { const h = document.getElementById("cell-heading"); if (h) h.focus(); });
      } catch (err) { this.error = err.message; this.gallery = []; }
    },

    async download() {
      this.exportBusy = true;
      this.error = "";
      try {
        // 202 until a worker has built it (once); a failed build or a refusal throws its problem's message.
        for (let i = 0; i < 60; i += 1) {
          const r = await graftApi.call(`/api/v1/models/${this.model.id}/download?format=${this.exportFormat}`);
          if (r.status === 200) {
            graftApi.save(r.body, `graft-model-${this.model.id}-${this.exportFormat}.zip`);
            this.say("Model downloaded.");
            return;
          }
          this.say(`The ${this.exportFormat} export is ${r.body.status}…`);
          await new Promise((ok) => setTimeout(ok, 1000 * (r.body.retry_after_s || 5)));
        }
        this.error = "The export is still being built; it goes on: try again later.";
      } catch (err) { this.error = err.message; } finally { this.exportBusy = false; }
    },

    async tryImages(files) {
      files = [...files].filter((f) => f.type.startsWith("image/") || /\.(jpe?g|png|gif|bmp|webp|tiff?)$/i.test(f.name));
      if (!files.length) return;
      this.tryBusy = true;
      this.error = "";
      const form = new FormData();
      files.slice(0, 32).forEach((f) => form.append("file", f, f.name));
      form.append("top_k", String(Math.min(5, this.model.classes.length)));
      try {
        let { status, body } = await graftApi.upload(`/api/v1/models/${this.model.id}/predict`, form, () => {});
        if (status === 202) {
          let job = body;
          while (!FINISHED.includes(job.status)) {
            await new Promise((ok) => setTimeout(ok, 1000));
            job = await graftApi.get(`/api/v1/jobs/${job.id}`);
          }
          body = await graftApi.get(`/api/v1/jobs/${job.id}/results`);
        }
        const urls = Object.fromEntries(files.map((f) => [f.name, URL.createObjectURL(f)]));
        this.tryResults = body.items.map((row, i) => ({ ...row, name: files[i] ? files[i].name : row.path, url: files[i] ? urls[files[i].name] : "" }));
      } catch (err) { this.error = err.message; } finally { this.tryBusy = false; }
    },

    // ---- batch predict ---------------------------------------------------------------------------------------
    async loadPredict(id) {
      if (!this.models.length || !id) this.models = (await graftApi.get("/api/v1/models?limit=100")).items;
      if (!this.predict.modelId && this.models.length) this.predict.modelId = this.route.params.model || this.models[0].id;
      if (!id) { this.job = null; this.results = []; return; }
      this.job = await graftApi.get(`/api/v1/jobs/${encodeURIComponent(id)}`);
      if (this.job.status === "succeeded" && !this.results.length) await this.loadResults(true);
    },

    async pickForPredict(event) {
      this.predict.items = graftApi.pickedFiles(event.target.files);
    },

    async dropForPredict(event) {
      this.predict.dragging = false;
      this.predict.items = await graftApi.droppedFiles(event.dataTransfer);
    },

    async submitPredict() {
      this.error = "";
      this.predict.busy = true;
      try {
        const body = { model_id: this.predict.modelId };
        if (this.predict.source === "server") {
          body.input_dir = this.predict.inputDir;
        } else {
          if (!this.predict.items.length) throw new Error("Choose or drop a folder, a zip or images first.");
          const form = new FormData();
          const file = await graftApi.archive(this.predict.items, "images");
          form.append("file", file, file.name);
          this.predict.progress = 0;
          const up = await graftApi.upload("/api/v1/uploads", form, (f) => { this.predict.progress = f; });
          body.upload_id = up.body.id;
        }
        const model = this.models.find((m) => m.id === this.predict.modelId);
        if (model) body.top_k = Math.min(3, model.classes.length);
        const { body: job } = await graftApi.call("/api/v1/jobs/predict", { method: "POST", json: body });
        this.results = [];
        this.say(`Batch prediction ${job.id} queued.`);
        location.hash = `#/predict/${job.id}`;
      } catch (err) { this.error = err.message; } finally { this.predict.busy = false; }
    },

    async loadResults(first) {
      const url = first ? `/api/v1/jobs/${this.job.id}/results?limit=1000` : this.resultsNext;
      const page = await graftApi.get(url);
      this.results = first ? page.items : this.results.concat(page.items);
      this.resultsSummary = page.summary;
      this.resultsNext = page.next;
    },

    // "unknown" has its own filter entry ("unknown only")
    resultLabels() {
      return [...new Set(this.results.filter((r) => r.label && r.label !== UNKNOWN).map((r) => r.label))].sort();
    },

    // What the API answered for one row, as the page says it: the label, or `unknown` with the API's reason.
    verdict(row) {
      if (row.error || !row.label) return "";
      return row.label === UNKNOWN ? `unknown: ${row.reason || "rejected"}` : row.label;
    },

    // The confidence column: none for `unknown` (the top class was rejected; the reason gives the numbers).
    verdictConfidence(row) { return row.label === UNKNOWN ? "–" : pct(row.confidence); },

    filteredResults() {
      const f = this.resultFilter;
      if (f === "all") return this.results;
      if (f === "errors") return this.results.filter((r) => r.error);
      if (f === "unknown") return this.results.filter((r) => r.label === UNKNOWN);
      return this.results.filter((r) => r.label === f.replace(/^label:/, ""));
    },

    resultThumb(row) {
      return `/api/v1/jobs/${this.job.id}/results/thumbnail?path=${encodeURIComponent(row.path)}`;
    },

    async downloadResults(format) {
      try {
        if (format === "csv") {
          const r = await graftApi.call(`/api/v1/jobs/${this.job.id}/results?format=csv`);
          graftApi.save(r.body, `predictions-${this.job.id}.csv`);
          return;
        }
        let url = `/api/v1/jobs/${this.job.id}/results?limit=1000`;
        const items = [];
        let summary = {};
        while (url) {
          const page = await graftApi.get(url);
          items.push(...page.items);
          summary = page.summary;
          url = page.next;
        }
        const blob = new Blob([JSON.stringify({ job_id: this.job.id, summary, items }, null, 2)], { type: "application/json" });
        graftApi.save(blob, `predictions-${this.job.id}.json`);
      } catch (err) { this.error = err.message; }
    },
  }));
});
