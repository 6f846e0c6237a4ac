// One task: its prompt, parameters, inputs, outputs, times, credits and callback attempts
// (with a resend button); "use as reference" and "run again with changes" fill the
// playground. A task still running is followed live.

import { api, ApiError } from "./api.js";
import { h, replace, announce, when } from "./dom.js";
import { follow } from "./events.js";
import { modelNamed, outputSize } from "./models.js";
import { fileName, isFinal, paramOf, promptOf, resultUrls } from "./records.js";
import { describe, failure, STATE_WORDS } from "./words.js";

export function taskView({ runAgain, useAsReference }) {
  const heading = h("h1", { text: "Task", tabIndex: -1, id: "task-title" });
  const body = h("div", { class: "task-body" });
  const element = h("section", { class: "view task", attrs: { "aria-labelledby": "task-title" } }, heading, body);
  let following = null;

  function definitions(pairs) {
    return h(
      "dl",
      { class: "facts" },
      pairs.filter(([, value]) => value !== undefined).map(([term, value]) => [h("dt", { text: term }), h("dd", {}, value)]),
    );
  }

  function section(title, ...content) {
    return h("section", { class: "task-part" }, h("h2", { text: title }), content);
  }

  function outputs(record, param) {
    const urls = resultUrls(record);
    if (record.state === "fail") return h("p", { class: "problem", text: failure(record) });
    if (!urls.length) return h("p", { class: "hint", text: `No image yet: ${STATE_WORDS[record.state] ?? record.state}.` });
    const input = param.input ?? {};
    const model = modelNamed(record.model);
    const size = model ? outputSize(model, input.aspect_ratio ?? model.defaults.aspect_ratio, input.resolution ?? model.defaults.resolution) : null;
    return urls.map((url) =>
      h(
        "figure",
        { class: "output" },
        h("img", { src: url, alt: promptOf(record), ...(size ?? {}) }),
        h(
          "figcaption",
          {},
          h("a", { href: url, text: "Download", attrs: { download: fileName(url) } }),
          h("a", { href: url, text: "Open full size", target: "_blank", rel: "noopener" }),
          h("button", { type: "button", class: "secondary", text: "Use as reference", on: { click: () => useAsReference(url) } }),
        ),
      ),
    );
  }

  function inputs(param) {
    const images = param.input?.image_input ?? [];
    if (!images.length) return h("p", { class: "hint", text: "No reference images." });
    return h(
      "ul",
      { class: "inputs" },
      images.map((url, index) => {
        const ours = new URL(url, location.href).origin === location.origin;
        const name = `Reference ${index + 1}`;
        return h(
          "li",
          {},
          ours ? h("img", { src: url, alt: name, width: 96, height: 96 }) : null,
          h("a", { href: url, text: ours ? `${name}: ${fileName(url)}` : `${name}: ${url}`, target: "_blank", rel: "noopener" }),
        );
      }),
    );
  }

  function callbackPart(record, param) {
    const part = section("Callback");
    if (!param.callBackUrl) {
      part.append(h("p", { class: "hint", text: "This task was sent without a callback URL." }));
      return part;
    }
    const details = h("div", { class: "callback" }, h("p", { class: "hint", text: "Loading the delivery attempts…" }));
    const result = h("p", { class: "hint", attrs: { "aria-live": "polite" } });
    const resend = h("button", { type: "button", class: "secondary", text: "Resend callback", hidden: !isFinal(record) });
    resend.addEventListener("click", async () => {
      result.textContent = "Sending…";
      try {
        let callback = await api.resendCallback(record.taskId);
        showCallback(details, callback);
        result.textContent = "Sent again: a new attempt is on its way.";
        // The attempt is made by the server's sender: show it once it is recorded.
        for (let tries = 0; tries < 30 && callback.deliveryState === "pending"; tries += 1) {
          await new Promise((resolve) => setTimeout(resolve, 1000));
          callback = await api.callbacks(record.taskId);
          showCallback(details, callback);
        }
      } catch (error) {
        if (!(error instanceof ApiError)) throw error;
        result.textContent = describe(error);
      }
    });
    part.append(details, resend, result);
    api.callbacks(record.taskId).then(
      (callback) => showCallback(details, callback),
      (error) => replace(details, h("p", { class: "problem", text: describe(error) })),
    );
    return part;
  }

  function render(record) {
    const param = paramOf(record);
    const input = param.input ?? {};
    heading.textContent = `Task ${record.taskId}`;
    replace(
      body,
      h("p", { class: `task-state ${record.state}`, text: `State: ${STATE_WORDS[record.state] ?? record.state}` }),
      section("Prompt", h("p", { class: "prompt-text", text: promptOf(record) })),
      h(
        "p",
        { class: "task-actions" },
        h("button", { type: "button", text: "Run again with changes", on: { click: () => runAgain(param) } }),
      ),
      section("Outputs", outputs(record, param)),
      section("Inputs", inputs(param)),
      section(
        "Parameters",
        definitions([
          ["Model", record.model],
          ["Aspect ratio", input.aspect_ratio ?? "default"],
          ["Resolution", input.resolution ?? "default"],
          ["Format", input.output_format ?? "default"],
          ["Callback URL", param.callBackUrl || "none"],
        ]),
      ),
      section(
        "Times and credits",
        definitions([
          ["Created", when(record.createTime)],
          ["Last change", when(record.updateTime)],
          ["Completed", when(record.completeTime)],
          ["Run time", record.costTime === null ? "—" : `${(record.costTime / 1000).toFixed(1)} s`],
          ["Credits", String(record.creditsConsumed)],
        ]),
      ),
      callbackPart(record, param),
    );
  }

  return {
    element,
    show(taskId) {
      following?.abort();
      following = new AbortController();
      heading.textContent = `Task ${taskId}`;
      replace(body, h("p", { class: "hint", text: "Loading…" }));
      let last = null;
      follow(taskId, {
        signal: following.signal,
        onRecord(record) {
          if (last && last.state === record.state && last.updateTime === record.updateTime) return;
          if (last) announce(`Task ${STATE_WORDS[record.state] ?? record.state}`);
          last = record;
          render(record);
        },
        onError(error) {
          replace(body, h("p", { class: "problem", text: describe(error) }));
        },
      });
    },
    hide() {
      following?.abort();
    },
  };
}

function showCallback(target, callback) {
  const rows = callback.attempts.map((attempt) =>
    h(
      "tr",
      {},
      h("td", { text: when(attempt.time) }),
      h("td", { text: attempt.httpStatus === null ? "—" : String(attempt.httpStatus) }),
      h("td", { text: `${attempt.durationMs} ms` }),
      h("td", { text: attempt.success ? "delivered" : attempt.error || "failed" }),
    ),
  );
  replace(
    target,
    h("p", {}, `Delivery: ${callback.deliveryState}`, callback.deliveredTime ? ` (${when(callback.deliveredTime)})` : ""),
    callback.upstream ? h("p", { class: "hint callback-upstream", text: `Served by upstream ${callback.upstream}` }) : null,
    h("p", { class: "hint callback-url", text: callback.callBackUrl }),
    rows.length
      ? h(
          "table",
          { class: "attempts" },
          h("caption", { text: "Delivery attempts" }),
          h("thead", {}, h("tr", {}, ["Time", "HTTP status", "Duration", "Result"].map((name) => h("th", { scope: "col", text: name })))),
          h("tbody", {}, rows),
        )
      : h("p", { class: "hint", text: "No attempt yet." }),
  );
}
