// The gallery: the account's tasks, newest first, as thumbnails, filtered by state and
// model, a page at a time ("Show more"). Each opens the task's own view.

import { api, ApiError } from "./api.js";
import { h, field, select, fillSelect, replace, when } from "./dom.js";
import { loadCatalogue } from "./models.js";
import { describe, STATE_WORDS } from "./words.js";
import { promptOf } from "./records.js";

const PAGE_SIZE = 24;

export function galleryView() {
  const state = select([["", "any state"], ...Object.entries(STATE_WORDS)]);
  const model = select([["", "any model"]]);
  const grid = h("ul", { class: "gallery-grid" });
  const status = h("p", { class: "hint", attrs: { "aria-live": "polite" } });
  const more = h("button", { type: "button", class: "secondary", text: "Show more", hidden: true });
  const element = h(
    "section",
    { class: "view gallery", attrs: { "aria-labelledby": "gallery-title" } },
    h("h1", { id: "gallery-title", text: "Gallery", tabIndex: -1 }),
    h("form", { class: "filters", on: { submit: (event) => event.preventDefault() } }, field("State", state), field("Model", model)),
    status,
    grid,
    more,
  );
  let cursor = null;
  let generation = 0;

  async function load({ fresh }) {
    const mine = fresh ? ++generation : generation;
    if (fresh) {
      cursor = null;
      replace(grid);
    }
    status.textContent = "Loading…";
    more.hidden = true;
    let page;
    try {
      page = await api.list({ state: state.value, model: model.value, limit: PAGE_SIZE, cursor });
    } catch (error) {
      if (!(error instanceof ApiError)) throw error;
      if (mine === generation) status.textContent = describe(error);
      return;
    }
    if (mine !== generation) return; // a newer filter was chosen meanwhile
    grid.append(...page.items.map(tile));
    cursor = page.nextCursor;
    more.hidden = !cursor;
    const shown = grid.children.length;
    status.textContent = shown ? `${shown} task${shown === 1 ? "" : "s"} shown` : "No tasks yet: generate one in the playground.";
  }

  for (const filter of [state, model]) filter.addEventListener("change", () => load({ fresh: true }));
  more.addEventListener("click", () => load({ fresh: false }));

  return {
    element,
    async show() {
      const catalogue = await loadCatalogue();
      if (model.options.length === 1) {
        fillSelect(model, [["", "any model"], ...catalogue.models.map((m) => m.model)]);
      }
      await load({ fresh: true });
    },
  };
}

/** One task as a thumbnail (its `alt` the prompt) or, with no image, its state. */
function tile(record) {
  const prompt = promptOf(record);
  const picture = record.thumbnailUrl
    ? h("img", { src: record.thumbnailUrl, alt: prompt, width: 256, height: 256, loading: "lazy", decoding: "async" })
    : h("span", { class: `tile-placeholder ${record.state}`, text: STATE_WORDS[record.state] ?? record.state });
  return h(
    "li",
    { class: "tile", attrs: { "data-task-id": record.taskId } },
    h(
      "a",
      { href: `#/task/${encodeURIComponent(record.taskId)}` },
      picture,
      // Said once: a thumbnail's alternative text is the prompt already.
      h("span", { class: "tile-prompt", text: prompt, attrs: { "aria-hidden": record.thumbnailUrl ? "true" : null } }),
      h("span", { class: "tile-meta", text: `${STATE_WORDS[record.state] ?? record.state} · ${record.model} · ${when(record.createTime)}` }),
    ),
  );
}
