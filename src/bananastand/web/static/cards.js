// A task's card in the playground: its prompt, its live state with the time since it was
// sent, then the result, large, with its links. The image's box is sized from the output's
// known pixel size before anything arrives, so the result lands without moving anything.

import { h, announce, duration } from "./dom.js";
import { describe, failure, STATE_WORDS } from "./words.js";
import { fileName, resultUrls } from "./records.js";

const STATE_MESSAGES = {
  waiting: "waiting for a worker",
  queuing: "fetching the inputs, waiting for the image model",
  generating: "the image model is at work",
};

/**
 * `{element, update(record), broken(error)}` for a task just created; `size` is the
 * expected `{width, height}` (or null when unknown: a square box, the image fitted in).
 */
export function taskCard({ taskId, prompt, size }) {
  const sentAt = performance.now();
  const state = h("span", { class: "state", text: STATE_WORDS.waiting });
  const elapsed = h("span", { class: "elapsed", text: "0 s" });
  const image = h("img", { class: "result", alt: prompt, hidden: true, decoding: "async" });
  const message = h("p", { class: "frame-message", text: STATE_MESSAGES.waiting });
  const frame = h("div", { class: "frame busy" }, image, message);
  frame.style.aspectRatio = size ? `${size.width} / ${size.height}` : "1 / 1";
  const download = h("a", { text: "Download", attrs: { download: "" } });
  const full = h("a", { text: "Open full size", target: "_blank", rel: "noopener" });
  const links = h("span", { class: "result-links" }, download, full);
  const element = h(
    "article",
    { class: "card", attrs: { "data-task-id": taskId } },
    h("p", { class: "card-prompt", text: prompt }),
    h("p", { class: "card-state" }, state, " · ", elapsed),
    frame,
    h("p", { class: "card-actions" }, links, h("a", { href: `#/task/${encodeURIComponent(taskId)}`, text: "Details" })),
  );
  const ticker = setInterval(() => {
    elapsed.textContent = duration(performance.now() - sentAt);
  }, 1000);
  let shown = "waiting";

  function finish(text, busy = false) {
    clearInterval(ticker);
    elapsed.textContent = duration(performance.now() - sentAt);
    frame.classList.toggle("busy", busy);
    message.textContent = text;
  }

  return {
    element,
    update(record) {
      if (record.state !== shown) {
        shown = record.state;
        state.textContent = STATE_WORDS[record.state] ?? record.state;
        element.dataset.state = record.state;
        announce(`${prompt.slice(0, 60)}: ${state.textContent}`);
      }
      if (record.state === "success") {
        const [url] = resultUrls(record);
        finish("");
        if (size) Object.assign(image, size);
        image.src = url;
        image.hidden = false;
        download.href = url;
        download.download = fileName(url);
        full.href = url;
        links.classList.add("ready");
      } else if (record.state === "fail") {
        finish(failure(record));
        frame.classList.add("failed");
      } else {
        message.textContent = STATE_MESSAGES[record.state] ?? "";
      }
    },
    /** The task can no longer be followed (its key revoked, the task gone). */
    broken(error) {
      finish(describe(error));
      frame.classList.add("failed");
    },
  };
}
