// The playground: a prompt, a model and its choices, reference images, what the output
// will be and cost, and the cards of the tasks sent from here, each followed live.

import { api, ApiError } from "./api.js";
import { h, field, select, fillSelect, announce, uniqueId } from "./dom.js";
import { loadCatalogue, modelNamed, nearestRatio, outputSize } from "./models.js";
import { referencesField, NotReady } from "./references.js";
import { taskCard } from "./cards.js";
import { follow } from "./events.js";
import { describe, invalidField } from "./words.js";

const NO_MODELS =
  "This key may use no model on this server right now: live keys need a provider the server " +
  "has not been given, or every model is switched off. A test key runs on the sandbox.";

export function playgroundView({ onCreated }) {
  const modelSelect = select([]);
  const prompt = h("textarea", { rows: 5, spellcheck: true });
  const counter = h("p", { class: "hint counter", id: uniqueId("prompt-count") });
  prompt.setAttribute("aria-describedby", counter.id);
  const aspect = select([]);
  const resolution = select([]);
  const format = select([]);
  const callback = h("input", { type: "url", placeholder: "https://… (optional)", autocomplete: "off" });
  const size = h("p", { class: "summary-size" });
  const price = h("p", { class: "summary-price" });
  const references = referencesField({ onChange: () => updateSummary() });
  const problem = h("p", { class: "problem", attrs: { role: "alert" } });
  const generate = h("button", { type: "submit", text: "Generate" });
  const help = sandboxHelp(prompt, () => updateCounter());
  const cards = h("div", { class: "cards" });
  const empty = h("p", { class: "hint", text: "The images you generate appear here, newest last." });
  const controls = {
    model: modelSelect,
    "input.prompt": prompt,
    "input.aspect_ratio": aspect,
    "input.resolution": resolution,
    "input.output_format": format,
    "input.image_input": references.control,
    callBackUrl: callback,
  };
  let busy = false;

  const form = h(
    "form",
    { class: "playground-form", noValidate: true, on: { submit } },
    field("Model", modelSelect),
    field("Prompt", prompt, counter, help.element),
    references.element,
    h("div", { class: "choices" }, field("Aspect ratio", aspect), field("Resolution", resolution), field("Format", format)),
    h("div", { class: "summary", attrs: { "aria-live": "polite" } }, size, price),
    h("details", { class: "more" }, h("summary", { text: "Callback" }), field("Callback URL", callback)),
    problem,
    generate,
  );
  const element = h(
    "section",
    { class: "view playground", attrs: { "aria-labelledby": "playground-title" } },
    h("h1", { id: "playground-title", text: "Playground", tabIndex: -1 }),
    h("div", { class: "columns" }, form, h("section", { class: "results", attrs: { "aria-label": "Results" } }, empty, cards)),
  );

  function model() {
    return modelNamed(modelSelect.value);
  }

  function updateCounter() {
    const limit = model()?.maxPromptLength ?? 0;
    const used = prompt.value.length;
    counter.textContent = `${used} / ${limit} characters`;
    counter.classList.toggle("over", used > limit);
  }

  /** The output's pixel size as it will be: `auto` follows the first reference image. */
  function expectedSize() {
    const chosen = model();
    let ratio = aspect.value;
    const shape = references.firstShape();
    if (ratio === "auto" && shape) ratio = nearestRatio(chosen, shape.width, shape.height);
    return outputSize(chosen, ratio, resolution.value);
  }

  function updateSummary() {
    const chosen = model();
    if (!chosen) return;
    const expected = expectedSize();
    const pixels = expected ? `${expected.width}×${expected.height}` : "the shape of the first reference image";
    size.textContent = `Output: ${aspect.value} · ${resolution.value} → ${aspect.value === "auto" && expected ? "about " : ""}${pixels}`;
    const credits = chosen.prices[resolution.value];
    price.textContent = `Price: ${credits === 0 ? "free (test key)" : `${credits} credits`}`;
  }

  function chooseModel(name, values = {}) {
    if (name) modelSelect.value = name;
    const chosen = model();
    const pick = (key) => values[key] ?? chosen.defaults[key];
    fillSelect(aspect, chosen.aspectRatios, pick("aspect_ratio"));
    fillSelect(resolution, chosen.resolutions, pick("resolution"));
    fillSelect(format, chosen.outputFormats, pick("output_format"));
    references.setLimit(chosen.maxImages);
    updateCounter();
    updateSummary();
  }

  function markInvalid(name) {
    for (const control of Object.values(controls)) control.removeAttribute("aria-invalid");
    const control = controls[name];
    if (!control) return;
    control.setAttribute("aria-invalid", "true");
    control.focus();
  }

  function refuse(text, name = null) {
    problem.textContent = text;
    markInvalid(name);
  }

  async function submit(event) {
    event.preventDefault();
    if (busy) return;
    const chosen = model();
    refuse("");
    if (!prompt.value.trim()) return refuse("Prompt: write what the image should show.", "input.prompt");
    let images;
    try {
      images = chosen.maxImages ? references.urls() : [];
    } catch (notReady) {
      if (!(notReady instanceof NotReady)) throw notReady;
      return refuse(notReady.message, "input.image_input");
    }
    const input = { prompt: prompt.value, aspect_ratio: aspect.value, resolution: resolution.value, output_format: format.value };
    if (images.length) input.image_input = images;
    const body = { model: chosen.model, input };
    if (callback.value.trim()) body.callBackUrl = callback.value.trim();
    const expected = expectedSize();
    busy = true;
    form.setAttribute("aria-busy", "true");
    try {
      const { taskId } = await api.createTask(body);
      addCard(taskId, input.prompt, expected);
      onCreated();
    } catch (error) {
      if (!(error instanceof ApiError)) throw error;
      const cost = chosen.prices[resolution.value];
      const balance = error.code === 402 ? await api.credit().catch(() => null) : null;
      refuse(describe(error, { cost, balance }), invalidField(error));
    } finally {
      busy = false;
      form.removeAttribute("aria-busy");
    }
  }

  function addCard(taskId, text, expected) {
    const card = taskCard({ taskId, prompt: text, size: expected });
    empty.hidden = true;
    cards.append(card.element);
    card.element.scrollIntoView({ block: "nearest" });
    announce("Task sent");
    follow(taskId, { onRecord: card.update, onError: card.broken });
  }

  modelSelect.addEventListener("change", () => chooseModel());
  prompt.addEventListener("input", updateCounter);
  for (const choice of [aspect, resolution]) choice.addEventListener("change", updateSummary);

  let ready = null;
  return {
    element,
    /** Fills the choices from the key's catalogue the first time the view is shown. */
    async show() {
      ready ??= loadCatalogue().then((catalogue) => {
        if (!catalogue.models.length) {
          form.replaceChildren(h("p", { class: "problem", text: NO_MODELS }));
          return;
        }
        fillSelect(modelSelect, catalogue.models.map((m) => m.model));
        help.offer(catalogue.sandbox);
        chooseModel();
      });
      await ready;
    },
    /** "Run again with changes": the choices of an earlier request, to edit and send. */
    async fill(param) {
      await this.show();
      const input = param.input ?? {};
      if (modelNamed(param.model)) chooseModel(param.model, input);
      prompt.value = input.prompt ?? "";
      callback.value = param.callBackUrl ?? "";
      references.replaceWith(input.image_input ?? []);
      updateCounter();
      updateSummary();
      prompt.focus();
    },
    /** "Use as reference": an image of ours added to the reference images. */
    async useAsReference(url) {
      await this.show();
      references.add(url);
      references.control.focus();
    },
  };
}

/** The sandbox's magic prompts in a popover (test keys only), each insertable. */
function sandboxHelp(prompt, changed) {
  const panelId = uniqueId("sandbox-prompts");
  const list = h("ul", { class: "magic" });
  const panel = h(
    "div",
    { id: panelId, class: "popover", attrs: { popover: "auto", role: "dialog", "aria-labelledby": `${panelId}-title` } },
    h("h2", { id: `${panelId}-title`, text: "Sandbox prompts" }),
    h("p", { text: "Test keys run on the sandbox. Put one of these in the prompt to force an outcome:" }),
    list,
    h("button", { type: "button", class: "secondary", text: "Close", attrs: { popovertarget: panelId, popovertargetaction: "hide" } }),
  );
  const opener = h("button", { type: "button", class: "secondary help", text: "Sandbox prompts", attrs: { popovertarget: panelId } });
  const element = h("div", { class: "sandbox-help", hidden: true }, opener, panel);
  return {
    element,
    offer(sandbox) {
      element.hidden = !sandbox;
      for (const { tag, effect } of sandbox?.magicPrompts ?? []) {
        const insert = () => {
          const before = `${prompt.value.trimEnd()} `.trimStart();
          prompt.value = before + tag;
          changed();
          panel.hidePopover();
          prompt.focus();
          // A tag with a value to give ([sandbox:delay=MS]): that part selected, to type over.
          const blank = tag.search(/[A-Z]{2,}/);
          if (blank >= 0) prompt.setSelectionRange(before.length + blank, before.length + tag.indexOf("]", blank));
        };
        list.append(
          h(
            "li",
            {},
            h("code", { text: tag }),
            h("span", { text: effect }),
            h("button", { type: "button", class: "secondary", text: "Insert", attrs: { "aria-label": `Insert ${tag}` }, on: { click: insert } }),
          ),
        );
      }
    },
  };
}
