// The playground's reference images: dropped or picked files (uploaded at once through the
// upload API) and links, up to the model's limit, each with a thumbnail and a remove button.

import { api } from "./api.js";
import { h, replace, announce, uniqueId } from "./dom.js";
import { describe } from "./words.js";

const IMAGE_TYPES = ["image/png", "image/jpeg", "image/webp"];

export class NotReady extends Error {}

/** `onChange()` is told whenever the images (or what is known of their shapes) change. */
export function referencesField({ onChange }) {
  let limit = 8;
  let items = [];
  const count = h("span", { class: "count" });
  const fileInput = h("input", { type: "file", multiple: true, accept: IMAGE_TYPES.join(","), id: uniqueId("files") });
  const urlInput = h("input", { type: "url", id: uniqueId("image-url"), placeholder: "https://…", autocomplete: "off" });
  const error = h("p", { class: "field-error", attrs: { "aria-live": "polite" } });
  const list = h("ul", { class: "thumbs" });
  const zone = h(
    "div",
    { class: "drop-zone" },
    h("label", { htmlFor: fileInput.id, text: "Drop images here, or choose them:" }),
    fileInput,
  );
  const addUrl = h("button", { type: "button", text: "Add URL", class: "secondary" });
  const element = h(
    "fieldset",
    { class: "references" },
    h("legend", {}, "Reference images ", count),
    zone,
    h("div", { class: "url-row" }, h("label", { htmlFor: urlInput.id, text: "Image URL" }), urlInput, addUrl),
    list,
    error,
  );

  function render() {
    onChange();
    count.textContent = `(${items.length} / ${limit})`;
    const full = items.length >= limit;
    fileInput.disabled = full;
    urlInput.disabled = full;
    addUrl.disabled = full;
    replace(
      list,
      items.map((item, index) => {
        const label = `reference ${index + 1} (${item.name})`;
        const preview = item.preview
          ? h("img", { src: item.preview, alt: `Reference ${index + 1}: ${item.name}`, width: 96, height: 96 })
          : h("span", { class: "thumb-link", text: item.name });
        return h(
          "li",
          { class: `thumb ${item.status}` },
          preview,
          h("span", { class: "thumb-status", text: item.status === "ready" ? "" : item.message }),
          h("button", {
            type: "button",
            class: "secondary",
            text: "Remove",
            attrs: { "aria-label": `Remove ${label}` },
            on: { click: () => remove(item) },
          }),
        );
      }),
    );
  }

  function remove(item) {
    items = items.filter((other) => other !== item);
    if (item.preview?.startsWith("blob:")) URL.revokeObjectURL(item.preview);
    render();
    announce(`Removed ${item.name}`);
    (list.querySelector("button") ?? fileInput).focus();
  }

  function room(wanted) {
    const free = limit - items.length;
    if (wanted > free) error.textContent = `This model takes at most ${limit} reference images.`;
    return Math.max(0, Math.min(free, wanted));
  }

  /** Remembers the natural shape of an image, for what `auto` will pick. */
  function measure(item) {
    if (!item.preview) return;
    const probe = new Image();
    probe.onload = () => {
      item.shape = { width: probe.naturalWidth, height: probe.naturalHeight };
      onChange();
    };
    probe.src = item.preview;
  }

  function addFiles(files) {
    error.textContent = "";
    const images = [...files].filter((file) => {
      if (IMAGE_TYPES.includes(file.type)) return true;
      error.textContent = `${file.name}: not a PNG, JPEG or WebP image.`;
      return false;
    });
    for (const file of images.slice(0, room(images.length))) {
      const item = { name: file.name, preview: URL.createObjectURL(file), status: "uploading", message: "uploading…" };
      items.push(item);
      measure(item);
      api.upload(file).then(
        (uploaded) => {
          Object.assign(item, { url: uploaded.downloadUrl, status: "ready", message: "" });
          render();
          announce(`${item.name} uploaded`);
        },
        (failed) => {
          Object.assign(item, { status: "error", message: describe(failed) });
          render();
        },
      );
    }
    render();
  }

  function addLink(text) {
    let url;
    try {
      url = new URL(text);
    } catch {
      url = null;
    }
    if (!url || !["http:", "https:"].includes(url.protocol)) {
      error.textContent = "Image URL: must be an http:// or https:// link.";
      return false;
    }
    if (!room(1)) return false;
    error.textContent = "";
    // Only this server's own images are shown: the page's policy loads no others.
    const preview = url.origin === location.origin ? url.href : null;
    const name = preview ? decodeURIComponent(url.pathname.split("/").pop()) : url.host;
    const item = { name, url: url.href, preview, status: "ready", message: "" };
    items.push(item);
    measure(item);
    render();
    return true;
  }

  fileInput.addEventListener("change", () => {
    addFiles(fileInput.files);
    fileInput.value = "";
  });
  addUrl.addEventListener("click", () => {
    if (addLink(urlInput.value.trim())) urlInput.value = "";
  });
  urlInput.addEventListener("keydown", (event) => {
    if (event.key === "Enter") {
      event.preventDefault();
      addUrl.click();
    }
  });
  zone.addEventListener("dragover", (event) => {
    event.preventDefault();
    zone.classList.add("over");
  });
  zone.addEventListener("dragleave", () => zone.classList.remove("over"));
  zone.addEventListener("drop", (event) => {
    event.preventDefault();
    zone.classList.remove("over");
    addFiles(event.dataTransfer.files);
  });
  render();

  return {
    element,
    /** The model's limit (0: it takes no images, and the field is not shown). */
    setLimit(max) {
      limit = max;
      element.hidden = max === 0;
      if (items.length > max) error.textContent = `This model takes at most ${max} reference images: remove some.`;
      render();
    },
    /** The links to send, or a NotReady saying what to do first. */
    urls() {
      if (items.length > limit) throw new NotReady(`Remove reference images: this model takes at most ${limit}.`);
      if (items.some((item) => item.status === "uploading")) throw new NotReady("Wait until the reference images have uploaded.");
      if (items.some((item) => item.status === "error")) throw new NotReady("Remove the reference images that failed to upload.");
      return items.map((item) => item.url);
    },
    /** The first image's natural size, once known (what `auto` follows). */
    firstShape: () => items[0]?.shape ?? null,
    replaceWith(urls) {
      items = [];
      error.textContent = "";
      for (const url of urls) addLink(url);
      render();
    },
    add: addLink,
    /** The control a refusal of the images points at. */
    control: fileInput,
  };
}
