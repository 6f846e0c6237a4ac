// The account: its balance, its usage per day (a chart), its ledger (each charge and refund
// linking to its task's view), its keys (revoke), and the secret its callbacks are signed
// with (reveal, rotate). All read with the visitor's own key.

import { api, ApiError } from "./api.js";
import { h, replace, svg, table, when, announce } from "./dom.js";
import { describe } from "./words.js";

const USAGE_DAYS = 30;
const REASONS = { grant: "grant", charge: "charge", refund: "refund" };

export function accountView({ onBalance, onOwnKeyRevoked }) {
  const balance = h("p", { class: "balance" });
  const chart = h("div", { class: "usage" });
  const ledgerBox = h("div", { class: "ledger" });
  const more = h("button", { type: "button", class: "secondary", text: "Show older entries", hidden: true });
  const keysBox = h("div", { class: "keys" });
  const secretBox = h("div", { class: "secret" });
  const problem = h("p", { class: "problem", attrs: { role: "alert" } });
  const element = h(
    "section",
    { class: "view account-view", attrs: { "aria-labelledby": "account-title" } },
    h("h1", { id: "account-title", text: "Account", tabIndex: -1 }),
    problem,
    h("h2", { text: "Balance" }),
    balance,
    h("h2", { text: `Usage, last ${USAGE_DAYS} days (UTC)` }),
    chart,
    h("h2", { text: "Ledger" }),
    ledgerBox,
    more,
    h("h2", { text: "API keys" }),
    h("p", { class: "hint", text: "New keys are made by the operator. A revoked key is refused from then on." }),
    keysBox,
    h("h2", { text: "Callback signing secret" }),
    secretBox,
  );
  let entries = [];
  let cursor = null;

  /** Runs an action of a button; a refusal is said in words where the page shows it. */
  async function act(action) {
    problem.textContent = "";
    try {
      await action();
    } catch (error) {
      if (!(error instanceof ApiError)) throw error;
      problem.textContent = describe(error);
      if (error.code === 401) throw error;
    }
  }

  async function loadLedger({ fresh }) {
    const page = await api.ledger(fresh ? null : cursor);
    entries = fresh ? page.entries : [...entries, ...page.entries];
    cursor = page.nextCursor;
    more.hidden = !cursor;
    replace(
      ledgerBox,
      entries.length
        ? table("Grants, charges and refunds, newest first", ["When", "What", "Credits", "Task", "Note"], entries.map(ledgerRow))
        : h("p", { class: "hint", text: "No entries yet." }),
    );
  }

  async function loadKeys() {
    const keys = await api.keys();
    replace(
      keysBox,
      table(
        "Keys of this account",
        ["Name", "Key", "Kind", "Created", "Last used", "Expires", "State", ""],
        keys.map((key) => keyRow(key, () => act(() => revoke(key)))),
      ),
    );
  }

  async function revoke(key) {
    await api.revokeKey(key.id);
    announce(`Key ${key.prefix}… revoked.`);
    if (key.current) return onOwnKeyRevoked();
    await loadKeys();
  }

  async function loadSecret({ rotate = false } = {}) {
    const secret = rotate ? await api.rotateWebhookSecret() : await api.webhookSecret();
    replace(secretBox, secretPanel(secret, () => act(() => loadSecret({ rotate: true }))));
    if (rotate) announce("A new callback secret was made.");
  }

  async function loadBalanceAndUsage() {
    const [credits, days] = await Promise.all([api.credit(), api.usage(USAGE_DAYS)]);
    balance.textContent = `${credits} credits`;
    onBalance(credits);
    replace(chart, usageChart(days));
  }

  more.addEventListener("click", () => act(() => loadLedger({ fresh: false })));

  return {
    element,
    async show() {
      problem.textContent = "";
      await Promise.all([loadBalanceAndUsage(), loadLedger({ fresh: true }), loadKeys(), loadSecret()]);
    },
  };
}

function ledgerRow(entry) {
  const task = entry.taskId ? h("a", { href: `#/task/${encodeURIComponent(entry.taskId)}`, text: entry.taskId }) : "—";
  const amount = entry.amount > 0 ? `+${entry.amount}` : String(entry.amount);
  return [when(entry.createdAt), REASONS[entry.reason] ?? entry.reason, amount, task, entry.note || ""];
}

function keyRow(key, onRevoke) {
  const revoked = key.revokedAt !== null;
  const expired = key.expiresAt !== null && key.expiresAt <= Date.now();
  const state = revoked ? `revoked ${when(key.revokedAt)}` : expired ? "expired" : "active";
  const button = revoked
    ? ""
    : h("button", {
        type: "button",
        class: "secondary",
        text: "Revoke",
        attrs: { "aria-label": `Revoke key ${key.prefix}…${key.current ? " (the key you signed in with)" : ""}` },
        on: { click: onRevoke },
      });
  return [
    key.name || "—",
    h("code", { text: `${key.prefix}…${key.current ? " (this tab)" : ""}` }),
    key.kind,
    when(key.createdAt),
    key.lastUsedAt ? when(key.lastUsedAt) : "never",
    key.expiresAt ? when(key.expiresAt) : "never",
    state,
    button,
  ];
}

function secretPanel(secret, onRotate) {
  const value = h("code", { class: "secret-value", text: "•".repeat(24) });
  const reveal = h("button", { type: "button", class: "secondary", text: "Reveal", attrs: { "aria-pressed": "false" } });
  reveal.addEventListener("click", () => {
    const shown = reveal.getAttribute("aria-pressed") !== "true";
    value.textContent = shown ? secret.secret : "•".repeat(24);
    reveal.setAttribute("aria-pressed", String(shown));
    reveal.textContent = shown ? "Hide" : "Reveal";
  });
  const rotate = h("button", { type: "button", class: "secondary", text: "Rotate", on: { click: onRotate } });
  const rotation = secret.previousSecretExpireTime
    ? `The previous secret still signs callbacks beside this one until ${when(secret.previousSecretExpireTime)}: update your receiver before then.`
    : "Rotating makes a new secret at once; the previous one keeps signing beside it for the server's rotation window, so that a receiver can switch without missing a callback.";
  return [
    h("p", { class: "hint", text: "Callbacks carry an HMAC of this secret (X-Webhook-Signature and webhook-signature): check it to know a callback came from here." }),
    h("p", { class: "secret-row" }, value, reveal, rotate),
    h("p", { class: "hint rotation", text: rotation }),
  ];
}

/** Tasks per day as bars, each with its day, tasks and credits as its title; the whole
 * chart summarised for screen readers, and the numbers as a table beside it. */
function usageChart(days) {
  const width = 600;
  const height = 160;
  const top = Math.max(1, ...days.map((day) => day.tasks));
  const slot = width / days.length;
  const dayName = (day) => new Date(day.day).toLocaleDateString(undefined, { timeZone: "UTC", month: "short", day: "numeric" });
  const bars = days.map((day, index) => {
    const barHeight = Math.round((day.tasks / top) * (height - 20));
    return svg(
      "rect",
      { x: index * slot + 1, y: height - barHeight, width: Math.max(1, slot - 2), height: barHeight, class: "bar-rect" },
      svg("title", {}, `${dayName(day)}: ${day.tasks} tasks, ${day.credits} credits`),
    );
  });
  const tasks = days.reduce((sum, day) => sum + day.tasks, 0);
  const credits = days.reduce((sum, day) => sum + day.credits, 0);
  const summary = `${tasks} tasks and ${credits} credits in the last ${days.length} days; at most ${top} tasks a day.`;
  const picture = svg(
    "svg",
    { viewBox: `0 0 ${width} ${height}`, role: "img", "aria-label": `Tasks per day. ${summary}`, class: "usage-chart" },
    svg("line", { x1: 0, y1: height, x2: width, y2: height, class: "axis" }),
    bars,
  );
  const used = days.filter((day) => day.tasks || day.credits);
  return [
    picture,
    h("p", { class: "hint", text: `${dayName(days[0])} – ${dayName(days.at(-1))}. ${summary}` }),
    h(
      "details",
      { class: "more" },
      h("summary", { text: "Usage per day as a table" }),
      used.length
        ? table("Days with use", ["Day (UTC)", "Tasks", "Credits"], used.map((day) => [dayName(day), String(day.tasks), String(day.credits)]))
        : h("p", { class: "hint", text: "No use in these days." }),
    ),
  ];
}
