// The knowledge panel: the app's vector stores ("collections"), creating one, uploading documents into it
// (POST /v1/files with purpose assistants, then attaching the file to the store) and following each file's
// ingestion until it is ready or failed.

import { icon } from "./icons.js";
import { announce, clearErrors, reportError } from "./notices.js";
import { humanMessage } from "./errors.js";

const STATUS = {
  uploading: "Uploading…",
  in_progress: "Processing…",
  completed: "Ready",
  failed: "Failed",
  cancelled: "Cancelled",
  rejected: "Rejected",
};
const POLL_MS = 1000;

function size(bytes) {
  if (typeof bytes !== "number") return "";
  if (bytes < 1024) return `${bytes} B`;
  if (bytes < 1024 * 1024) return `${(bytes / 1024).toFixed(1)} KB`;
  return `${(bytes / 1024 / 1024).toFixed(1)} MB`;
}

export class KnowledgePanel {
  /**
   * @param options.onStores(stores) the list of stores changed (the chat's "Documents" picker follows it)
   * @param options.onUse(store) the person asked to answer from this store in the chat
   */
  constructor(api, { onStores, onUse }) {
    this.api = api;
    this.onStores = onStores;
    this.onUse = onUse;
    this.stores = [];
    this.selectedId = null;
    this.files = new Map(); // file id -> file object (its filename and size)
    this.rows = []; // the selected store's files: {id, filename, bytes, status, error}
    this.pending = []; // uploads not yet attached, shown first
    this.pollTimer = 0;
    this.storeList = document.getElementById("store-list");
    this.storesEmpty = document.getElementById("stores-empty");
    this.detail = document.getElementById("store-detail");
    this.fileList = document.getElementById("file-list");
    this.fileInput = document.getElementById("file-input");

    document.getElementById("store-create").addEventListener("submit", (event) => {
      event.preventDefault();
      this.create();
    });
    this.fileInput.addEventListener("change", () => {
      const files = [...this.fileInput.files];
      this.fileInput.value = "";
      this.upload(files);
    });
    document.getElementById("store-use").addEventListener("click", () => {
      const store = this.selected();
      if (store) this.onUse(store);
    });
    const drop = document.getElementById("dropzone");
    drop.addEventListener("dragover", (event) => {
      event.preventDefault();
      drop.classList.add("dragging");
    });
    drop.addEventListener("dragleave", () => drop.classList.remove("dragging"));
    drop.addEventListener("drop", (event) => {
      event.preventDefault();
      drop.classList.remove("dragging");
      this.upload([...event.dataTransfer.files]);
    });
  }

  selected() {
    return this.stores.find((s) => s.id === this.selectedId) || null;
  }

  async load() {
    try {
      this.stores = (await this.api.vectorStores()).data;
    } catch (error) {
      reportError(error, "store");
      if (error.status === 429 && error.retryAfter) setTimeout(() => this.load(), error.retryAfter * 1000 + 250);
      this.stores = [];
    }
    if (!this.selected()) this.selectedId = this.stores.length ? this.stores[0].id : null;
    this.renderStores();
    this.onStores(this.stores);
    if (this.selectedId) await this.loadFiles();
    else this.renderDetail();
  }

  async create() {
    const input = document.getElementById("store-name");
    const name = input.value.trim();
    if (!name) {
      input.focus();
      return;
    }
    try {
      const store = await this.api.createVectorStore(name);
      input.value = "";
      this.stores = [store, ...this.stores];
      this.selectedId = store.id;
      this.rows = [];
      this.renderStores();
      this.renderDetail();
      this.onStores(this.stores);
      announce(`Collection “${store.name}” created. Add documents to it.`);
      document.getElementById("file-input").focus();
    } catch (error) {
      reportError(error, "store");
    }
  }

  select(id) {
    if (id === this.selectedId) return;
    this.selectedId = id;
    this.rows = [];
    this.pending = [];
    this.renderStores();
    this.loadFiles();
  }

  renderStores() {
    this.storeList.replaceChildren(
      ...this.stores.map((store) => {
        const li = document.createElement("li");
        const button = document.createElement("button");
        button.type = "button";
        button.className = "store";
        if (store.id === this.selectedId) button.setAttribute("aria-current", "true");
        const name = document.createElement("span");
        name.className = "store-name";
        name.textContent = store.name || store.id;
        const counts = document.createElement("span");
        counts.className = "store-counts muted";
        const total = store.file_counts ? store.file_counts.total : 0;
        counts.textContent = `${total} ${total === 1 ? "document" : "documents"}${store.default ? " · app default" : ""}`;
        button.append(name, counts);
        button.addEventListener("click", () => this.select(store.id));
        li.append(button);
        return li;
      }),
    );
    this.storesEmpty.hidden = this.stores.length > 0;
  }

  async loadFiles() {
    const storeId = this.selectedId;
    clearTimeout(this.pollTimer);
    if (!storeId) return;
    try {
      const attached = (await this.api.storeFiles(storeId)).data;
      await Promise.all(
        attached
          .filter((f) => !this.files.has(f.id))
          .map((f) =>
            this.api
              .file(f.id)
              .then((file) => this.files.set(f.id, file))
              .catch(() => this.files.set(f.id, { id: f.id, filename: f.id })),
          ),
      );
      if (storeId !== this.selectedId) return;
      const before = new Map(this.rows.map((r) => [r.id, r.status]));
      this.rows = attached.map((f) => ({
        id: f.id,
        filename: (this.files.get(f.id) || {}).filename || f.id,
        bytes: (this.files.get(f.id) || {}).bytes,
        status: f.status,
        error: f.last_error ? f.last_error.message : null,
      }));
      for (const row of this.rows) {
        const was = before.get(row.id);
        if (was === "in_progress" && row.status === "completed") announce(`${row.filename} is ready.`);
        if (was === "in_progress" && row.status === "failed") announce(`${row.filename} could not be processed.`);
      }
      this.pending = this.pending.filter((p) => !this.rows.some((r) => r.id === p.id));
      this.renderDetail();
      if (this.rows.some((r) => r.status === "in_progress")) {
        this.pollTimer = setTimeout(() => this.loadFiles(), POLL_MS);
      } else {
        this.refreshCounts();
      }
    } catch (error) {
      reportError(error, "store");
    }
  }

  async refreshCounts() {
    try {
      this.stores = (await this.api.vectorStores()).data;
      this.renderStores();
      this.onStores(this.stores);
    } catch {
      // the counts are a nicety: the next load shows them
    }
  }

  async upload(files) {
    const store = this.selected();
    if (!store || !files.length) return;
    clearErrors((alert) => alert.dataset.key.startsWith("upload:"));
    for (const file of files) {
      const row = { id: null, filename: file.name, bytes: file.size, status: "uploading", error: null };
      this.pending.unshift(row);
      this.renderDetail();
      try {
        const uploaded = await this.api.uploadFile(file);
        this.files.set(uploaded.id, uploaded);
        row.id = uploaded.id;
        await this.api.attachFile(store.id, uploaded.id);
        row.status = "in_progress";
        announce(`${file.name} uploaded; processing it.`);
      } catch (error) {
        row.status = "rejected";
        row.error = humanMessage(error, "upload");
        reportError(error, "upload");
      }
      this.renderDetail();
    }
    await this.loadFiles();
  }

  async detach(row) {
    try {
      await this.api.detachFile(this.selectedId, row.id);
      announce(`${row.filename} removed from the collection.`);
      await this.loadFiles();
    } catch (error) {
      reportError(error, "store");
    }
  }

  renderDetail() {
    const store = this.selected();
    this.detail.hidden = !store;
    document.getElementById("knowledge-start").hidden = Boolean(store);
    if (!store) return;
    document.getElementById("store-title").textContent = store.name || store.id;
    document.getElementById("file-input-label").textContent = `Add documents to “${store.name || store.id}”`;
    const rows = [...this.pending.filter((p) => !p.id || !this.rows.some((r) => r.id === p.id)), ...this.rows];
    document.getElementById("files-empty").hidden = rows.length > 0;
    this.fileList.replaceChildren(...rows.map((row) => this.fileRow(row)));
  }

  fileRow(row) {
    const li = document.createElement("li");
    li.className = `file status-${row.status}`;
    const name = document.createElement("span");
    name.className = "file-name";
    name.textContent = row.filename;
    const meta = document.createElement("span");
    meta.className = "file-size muted";
    meta.textContent = size(row.bytes);
    const status = document.createElement("span");
    status.className = "file-status";
    if (row.status === "uploading" || row.status === "in_progress") {
      status.innerHTML = '<span class="spinner" aria-hidden="true"></span>';
    }
    status.append(STATUS[row.status] || row.status);
    li.append(name, meta, status);
    if (row.error) {
      const error = document.createElement("p");
      error.className = "file-error";
      error.textContent = row.error;
      li.append(error);
    }
    if (row.id && row.status !== "uploading" && row.status !== "rejected") {
      const remove = document.createElement("button");
      remove.type = "button";
      remove.className = "icon-button";
      remove.setAttribute("aria-label", `Remove ${row.filename} from the collection`);
      remove.title = "Remove from the collection";
      remove.innerHTML = icon("trash");
      remove.addEventListener("click", () => this.detach(row));
      li.append(remove);
    }
    return li;
  }
}
