// Graft's HTTP API as the dashboard uses it: the token (sessionStorage only), JSON calls, problem+json errors,
// uploads with progress (XHR upload events), images fetched with the token, downloads, folder zipping.
"use strict";

const TOKEN_KEY = "graft.token";

const graftApi = {
  token() { return sessionStorage.getItem(TOKEN_KEY); },
  setToken(value) { sessionStorage.setItem(TOKEN_KEY, value); },
  clearToken() { sessionStorage.removeItem(TOKEN_KEY); },
  onUnauthorized: () => {},

  headers(extra) {
    return Object.assign({ Authorization: `Bearer ${this.token()}` }, extra || {});
  },

  // An Error carrying the problem's detail, status and per-field errors.
  async problem(response) {
    let body = {};
    try { body = await response.json(); } catch (_e) { /* not JSON */ }
    const err = new Error(body.detail || body.error || `${response.status} ${response.statusText}`);
    err.status = response.status;
    err.fields = body.errors || (body.field ? [{ field: body.field, message: body.detail }] : []);
    err.body = body;
    if (response.status === 401) this.onUnauthorized();
    return err;
  },

  // fetch path; returns {status, body}; throws the problem for 4xx/5xx.
  async call(path, options = {}) {
    const init = Object.assign({}, options, { headers: this.headers(options.headers) });
    if (options.json !== undefined) {
      init.body = JSON.stringify(options.json);
      init.headers["Content-Type"] = "application/json";
    }
    const response = await fetch(path, init);
    if (!response.ok) throw await this.problem(response);
    const type = response.headers.get("Content-Type") || "";
    const body = type.includes("json") ? await response.json() : await response.blob();
    return { status: response.status, body, headers: response.headers };
  },

  async get(path) { return (await this.call(path)).body; },

  // POST a FormData with XHR so the upload reports progress (fraction 0..1) through onProgress.
  upload(path, form, onProgress) {
    return new Promise((resolve, reject) => {
      const xhr = new XMLHttpRequest();
      xhr.open("POST", path);
      xhr.setRequestHeader("Authorization", `Bearer ${this.token()}`);
      xhr.upload.onprogress = (e) => { if (e.lengthComputable) onProgress(e.loaded / e.total); };
      xhr.onload = () => {
        let body = {};
        try { body = JSON.parse(xhr.responseText); } catch (_e) { /* empty */ }
        if (xhr.status >= 200 && xhr.status < 300) { onProgress(1); resolve({ status: xhr.status, body }); return; }
        const err = new Error(body.detail || body.error || `upload failed (${xhr.status})`);
        err.status = xhr.status;
        err.fields = body.errors || [];
        if (xhr.status === 401) this.onUnauthorized();
        reject(err);
      };
      xhr.onerror = () => reject(new Error("the upload failed: network error"));
      xhr.send(form);
    });
  },

  // Load an image that needs the token into img (an object URL); silently leaves it empty on failure.
  async image(img, path) {
    if (!path) return;
    try {
      const blob = (await this.call(path)).body;
      if (img.dataset.url) URL.revokeObjectURL(img.dataset.url);
      img.dataset.url = URL.createObjectURL(blob);
      img.src = img.dataset.url;
    } catch (_e) {
      img.alt = `${img.alt} (no thumbnail)`;
    }
  },

  // Save a blob as a file through a temporary link.
  save(blob, name) {
    const link = document.createElement("a");
    link.href = URL.createObjectURL(blob);
    link.download = name;
    document.body.appendChild(link);
    link.click();
    setTimeout(() => { URL.revokeObjectURL(link.href); link.remove(); }, 1000);
  },

  // Files of a drop: plain files, or every file below dropped folders, as [{path, file}].
  async droppedFiles(dataTransfer) {
    const entries = [...dataTransfer.items || []].map((i) => i.webkitGetAsEntry && i.webkitGetAsEntry()).filter(Boolean);
    if (!entries.length) return [...dataTransfer.files].map((f) => ({ path: f.name, file: f }));
    const out = [];
    const walk = async (entry, prefix) => {
      if (entry.isFile) {
        out.push({ path: prefix + entry.name, file: await new Promise((ok, ko) => entry.file(ok, ko)) });
        return;
      }
      const reader = entry.createReader();
      for (;;) {
        const batch = await new Promise((ok, ko) => reader.readEntries(ok, ko));
        if (!batch.length) break;
        for (const child of batch) await walk(child, `${prefix}${entry.name}/`);
      }
    };
    for (const entry of entries) await walk(entry, "");
    return out;
  },

  // Files chosen with an <input type=file webkitdirectory> (or plain multiple), as [{path, file}].
  pickedFiles(fileList) {
    return [...fileList].map((f) => ({ path: f.webkitRelativePath || f.name, file: f }));
  },

  // One archive from [{path, file}]: a lone zip/tar as is, anything else zipped here (stored, not compressed:
  // images are compressed already).
  async archive(items, name) {
    if (items.length === 1 && /\.(zip|tar|tgz|tar\.gz|tar\.bz2|tar\.xz)$/i.test(items[0].file.name)) {
      return items[0].file;
    }
    const tree = {};
    for (const { path, file } of items) {
      tree[path] = [new Uint8Array(await file.arrayBuffer()), { level: 0 }];
    }
    const zipped = fflate.zipSync(tree);
    return new File([zipped], `${name || "folder"}.zip`, { type: "application/zip" });
  },
};

window.graftApi = graftApi;
