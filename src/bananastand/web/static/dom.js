// Building the page's elements. Everything shown goes in as text (textContent, attributes,
// properties): prompts, file names and error messages are other people's text, so nothing
// here ever parses HTML.

/**
 * h("button", {type: "button", class: "x", on: {click}}, "text", child, ...): an element.
 * `class`, `text`, `on` (event listeners), `attrs` (attributes, e.g. aria-*) and `style`
 * (CSSOM properties, which the page's policy allows where style attributes are refused)
 * are handled here; every other prop is set as a property (type, value, hidden, href...).
 */
export function h(tag, props = {}, ...children) {
  const element = document.createElement(tag);
  for (const [name, value] of Object.entries(props)) {
    if (value === undefined || value === null) continue;
    if (name === "class") element.className = value;
    else if (name === "text") element.textContent = value;
    else if (name === "on") {
      for (const [event, listener] of Object.entries(value)) element.addEventListener(event, listener);
    } else if (name === "attrs") {
      for (const [attr, attrValue] of Object.entries(value)) {
        if (attrValue !== undefined && attrValue !== null && attrValue !== false) {
          element.setAttribute(attr, attrValue === true ? "" : String(attrValue));
        }
      }
    } else if (name === "style") Object.assign(element.style, value);
    else element[name] = value;
  }
  append(element, children);
  return element;
}

/** Appends children (nodes, strings as text, arrays; null and false are skipped). */
export function append(parent, children) {
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    parent.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return parent;
}

/** Replaces an element's children. */
export function replace(parent, ...children) {
  parent.replaceChildren();
  return append(parent, children);
}

let fieldIds = 0;

/** A unique id for tying a label or description to its control. */
export function uniqueId(prefix) {
  fieldIds += 1;
  return `${prefix}-${fieldIds}`;
}

/** A label and its control, tied by id: `field("Prompt", h("textarea"))`. */
export function field(labelText, control, ...extra) {
  control.id ||= uniqueId("field");
  return h("div", { class: "field" }, h("label", { htmlFor: control.id, text: labelText }), control, extra);
}

/** A select whose options are `[value, text]` pairs (or plain values). */
export function select(options, value) {
  const element = h("select");
  fillSelect(element, options, value);
  return element;
}

export function fillSelect(element, options, value) {
  replace(
    element,
    options.map((option) => {
      const [optionValue, text] = Array.isArray(option) ? option : [option, option];
      return h("option", { value: optionValue, text });
    }),
  );
  if (value !== undefined && options.some((o) => (Array.isArray(o) ? o[0] : o) === value)) element.value = value;
}

/** Tells screen readers what changed where the eyes would see it (a polite live region). */
export function announce(text) {
  const announcer = document.getElementById("announcer");
  announcer.textContent = "";
  // A fresh text node in a later task is read out even when the text is the same as before.
  setTimeout(() => {
    announcer.textContent = text;
  }, 50);
}

/** A time in the visitor's own words and zone. */
export function when(ms) {
  return ms ? new Date(ms).toLocaleString() : "—";
}

/** "12 s", "3 min 4 s". */
export function duration(ms) {
  const seconds = Math.max(0, Math.floor(ms / 1000));
  return seconds < 60 ? `${seconds} s` : `${Math.floor(seconds / 60)} min ${seconds % 60} s`;
}

const SVG = "http://www.w3.org/2000/svg";

/** An SVG element (charts): attributes only, children as for `h`. */
export function svg(tag, attrs = {}, ...children) {
  const element = document.createElementNS(SVG, tag);
  for (const [name, value] of Object.entries(attrs)) element.setAttribute(name, String(value));
  return append(element, children);
}

/** A table with a caption, header cells and rows of cells (nodes or text), in a box that
 * scrolls sideways on a narrow screen rather than the page. */
export function table(caption, headers, rows) {
  return h(
    "div",
    { class: "table-box" },
    h(
      "table",
      { class: "data-table" },
      h("caption", { text: caption }),
      h("thead", {}, h("tr", {}, headers.map((text) => h("th", { attrs: { scope: "col" }, text })))),
      h("tbody", {}, rows.map((cells) => h("tr", {}, cells.map((cell) => h("td", {}, cell))))),
    ),
  );
}
