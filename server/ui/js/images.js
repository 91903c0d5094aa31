// The image tab: generate images (POST /v1/images/generations, response_format url) and the app's gallery
// (GET /v1/images, newest first; each url is signed, usable as an <img src> as it is).

import { announce, clearErrors, reportError } from "./notices.js";

const DATE = new Intl.DateTimeFormat(undefined, { dateStyle: "medium", timeStyle: "short" });

export class ImagesPanel {
  constructor(api) {
    this.api = api;
    this.models = [];
    this.images = [];
    this.hasMore = false;
    this.loaded = false;
    this.busy = false;
    this.form = document.getElementById("image-form");
    this.prompt = document.getElementById("image-prompt");
    this.modelSelect = document.getElementById("image-model");
    this.button = document.getElementById("image-generate");
    this.gallery = document.getElementById("gallery");
    this.galleryEmpty = document.getElementById("gallery-empty");
    this.more = document.getElementById("gallery-more");
    this.form.addEventListener("submit", (event) => {
      event.preventDefault();
      this.generate();
    });
    this.prompt.addEventListener("keydown", (event) => {
      if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
        event.preventDefault();
        this.generate();
      }
    });
    this.more.addEventListener("click", () => this.load({ more: true }));
    this.modelSelect.addEventListener("change", () => this.modelChanged());
  }

  setModels(models) {
    this.models = models;
    const previous = this.modelSelect.value;
    this.modelSelect.replaceChildren(...models.map((model) => option(model.id, model.id)));
    if (models.some((m) => m.id === previous)) this.modelSelect.value = previous;
    const none = models.length === 0;
    document.getElementById("images-unavailable").hidden = !none;
    for (const control of this.form.querySelectorAll("select, textarea, button")) control.disabled = none;
    this.modelChanged();
  }

  /** The size and count pickers offer what the chosen model makes (its `sizes`, the first its default). */
  modelChanged() {
    const model = this.models.find((m) => m.id === this.modelSelect.value);
    const sizes = (model && model.sizes) || [];
    const sizeSelect = document.getElementById("image-size");
    const size = sizeSelect.value;
    sizeSelect.replaceChildren(
      ...(sizes.length ? sizes.map((s) => option(s, s.replace("x", " × "))) : [option("", "Model's default")]),
    );
    if (sizes.includes(size)) sizeSelect.value = size;
    const countSelect = document.getElementById("image-count");
    const count = countSelect.value;
    const most = Math.max(1, Math.min(4, (model && model.max_images) || 1));
    countSelect.replaceChildren(...Array.from({ length: most }, (_, i) => option(String(i + 1), String(i + 1))));
    if (Number(count) <= most) countSelect.value = count;
  }

  async load({ more = false } = {}) {
    const after = more && this.images.length ? this.images.at(-1).id : undefined;
    this.gallery.setAttribute("aria-busy", "true");
    if (!more && !this.loaded) this.galleryEmpty.textContent = "Loading the gallery…";
    try {
      const page = await this.api.images({ after });
      this.images = more ? [...this.images, ...page.data] : page.data;
      this.hasMore = Boolean(page.has_more);
      this.loaded = true;
      this.render();
    } catch (error) {
      this.galleryEmpty.textContent =
        error.status === 404 ? "Image generation is not available on this platform." : "The gallery could not be loaded.";
      this.galleryEmpty.hidden = false;
      if (error.status !== 404) reportError(error, "image");
    } finally {
      this.gallery.setAttribute("aria-busy", "false");
    }
  }

  async generate() {
    const prompt = this.prompt.value.trim();
    if (!prompt || this.busy) {
      if (!prompt) this.prompt.focus();
      return;
    }
    const request = {
      model: this.modelSelect.value,
      prompt,
      n: Number(document.getElementById("image-count").value),
    };
    const size = document.getElementById("image-size").value;
    if (size) request.size = size;
    this.busy = true;
    this.button.disabled = true;
    this.button.textContent = "Generating…";
    const status = document.getElementById("image-progress");
    status.hidden = false;
    clearErrors((alert) => alert.dataset.key.startsWith("image:") || alert.dataset.key === "rate-limit");
    try {
      const result = await this.api.generateImages(request);
      const count = result.data.length;
      announce(count === 1 ? "The image is ready." : `${count} images are ready.`);
      await this.load();
      this.gallery.querySelector("a")?.focus();
    } catch (error) {
      reportError(error, "image");
    } finally {
      this.busy = false;
      this.button.disabled = this.models.length === 0;
      this.button.textContent = "Generate";
      status.hidden = true;
    }
  }

  render() {
    this.gallery.replaceChildren(...this.images.map((image) => figure(image)));
    this.galleryEmpty.hidden = this.images.length > 0;
    this.galleryEmpty.textContent = "No images yet. The images this app generates appear here.";
    this.more.hidden = !this.hasMore;
  }
}

function option(value, text) {
  const element = document.createElement("option");
  element.value = value;
  element.textContent = text;
  return element;
}

function figure(image) {
  const li = document.createElement("li");
  const fig = document.createElement("figure");
  const link = document.createElement("a");
  link.href = image.url;
  link.target = "_blank";
  link.rel = "noopener noreferrer";
  link.setAttribute("aria-label", `Open the image “${image.prompt}” in full size (new tab)`);
  const img = document.createElement("img");
  img.src = image.url;
  img.alt = image.revised_prompt || image.prompt || "Generated image";
  img.loading = "lazy";
  img.decoding = "async";
  const [width, height] = String(image.size || "").split("x").map(Number);
  if (width && height) {
    img.width = width;
    img.height = height;
  }
  link.append(img);
  const caption = document.createElement("figcaption");
  const prompt = document.createElement("span");
  prompt.className = "gallery-prompt";
  prompt.textContent = image.prompt;
  const meta = document.createElement("span");
  meta.className = "muted";
  meta.textContent = [image.model, (image.size || "").replace("x", " × "), image.created ? DATE.format(new Date(image.created * 1000)) : ""]
    .filter(Boolean)
    .join(" · ");
  caption.append(prompt, meta);
  fig.append(link, caption);
  li.append(fig);
  return li;
}
